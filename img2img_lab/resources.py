"""The files img2img-lab ships: the embedded shapes-world model, the sample sources, the example configs and the
notebooks, found the same way from a checkout and from an installed wheel.

The repository keeps them at its top level (``data/``, ``notebooks/``), where people and git see them. The build
step in ``setup.py`` copies both into the built package as ``img2img_lab/_bundled/data`` and
``img2img_lab/_bundled/notebooks``, so a wheel or sdist install carries them inside the package (nothing is written
beside ``site-packages``). :func:`bundled_dir` looks in the installed package first (``importlib.resources``), then
in the checkout the package was imported from. Why a build step and not moved files or a ``package-dir`` mapping:
the top-level folders stay real folders on every system (no symlinks for Windows checkouts), git holds one copy, and
an editable install needs nothing but the checkout.

>>> bundled_dir("data").joinpath("configs", "demo.yaml").is_file()
True
>>> sorted(bundled_sources())[:2]
['black_square_on_green', 'blue_circle_on_white']
>>> example_config("quick").name
'quick.yaml'
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

from img2img_lab.errors import Img2ImgLabError, PlanError

#: What is bundled, by kind: the ``data`` folder (model, sources, configs) and the ``notebooks``.
KINDS = ("data", "notebooks")


def _candidates(kind: str) -> tuple[Path, Path]:
    """Where ``kind`` may be: inside the installed package, then in the checkout."""
    installed = Path(str(resources.files("img2img_lab").joinpath("_bundled", kind)))
    return installed, Path(__file__).resolve().parent.parent / kind


def bundled_dir(kind: str) -> Path:
    """The folder holding the bundled ``kind`` (``"data"`` or ``"notebooks"``): inside the installed package, else the
    checkout's top-level folder. Raises a one-line error naming both places when neither exists."""
    if kind not in KINDS:
        raise Img2ImgLabError(f"unknown bundled folder {kind!r}. Fix: use one of {', '.join(KINDS)}.")
    installed, checkout = _candidates(kind)
    for folder in (installed, checkout):
        if folder.is_dir():
            return folder
    raise Img2ImgLabError(f"the bundled {kind} folder is missing (looked in {installed} and {checkout}). Fix: "
                          f"reinstall img2img-lab from a wheel or sdist (`pip install --force-reinstall img2img-lab`), "
                          f"or run from a complete git checkout.")


def data_path(*parts: str) -> Path:
    """A path inside the bundled ``data`` folder (it may not exist: callers say what is missing).

    >>> data_path("models", "shapes-world").name
    'shapes-world'
    """
    return bundled_dir("data").joinpath(*parts)


def embedded_model_dir() -> Path:
    """The embedded shapes-world model's folder (where it should be when it is missing: errors name it).

    >>> (embedded_model_dir() / "model_index.json").is_file()
    True
    """
    installed, checkout = _candidates("data")
    return (checkout if checkout.is_dir() and not installed.is_dir() else installed) / "models" / "shapes-world"


def embedded_controlnet_dir() -> Path:
    """The embedded model's ControlNet (the silhouette control, :mod:`img2img_lab.shapes.train_controlnet`): a
    diffusers ``ControlNetModel`` folder beside the model.

    >>> (embedded_controlnet_dir() / "config.json").is_file()
    True
    """
    return embedded_model_dir().parent / "shapes-world-controlnet"


def bundled_sources() -> dict[str, str]:
    """The sample source images: ``{name: path}``, sorted by name (the explorer's and notebook 01's choices)."""
    folder = data_path("sources")
    return {path.stem: str(path) for path in sorted(folder.glob("*.png"))}


def example_config(name: str) -> Path:
    """The bundled example config ``name`` (``quick``, ``demo``, ``guidance``, ``calibrate``, ``inpaint``; ``.yaml`` optional)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    path = data_path("configs", f"{stem}.yaml")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in data_path("configs").glob("*.yaml")))
        raise Img2ImgLabError(f"no bundled example config {name!r}. Fix: use one of {known}.")
    return path


def find_config(text: str | os.PathLike) -> Path:
    """A config given by path, or by the name of a bundled example (``quick``, ``calibrate``…) when no such file
    exists; a one-line error otherwise.

    >>> find_config("calibrate").name, find_config("data/configs/quick.yaml").as_posix()
    ('calibrate.yaml', 'data/configs/quick.yaml')
    """
    path = Path(text)
    if path.exists() or len(path.parts) > 1 or path.suffix:
        if not path.is_file():
            raise PlanError(f"config file {text} does not exist. Fix: check the path, or name a bundled example "
                            f"({', '.join(_example_names())}).")
        return path
    if str(text) in _example_names():
        return example_config(str(text))
    raise PlanError(f"config file {text} does not exist. Fix: give the path of a YAML config, or the name of a "
                    f"bundled example ({', '.join(_example_names())}).")


def _example_names() -> list[str]:
    return sorted(path.stem for path in data_path("configs").glob("*.yaml"))


def copy_notebooks(destination, *, overwrite: bool = False) -> list[Path]:
    """Copy the bundled notebooks into ``destination`` (created if needed); return the copied paths.

    An existing notebook of the same name is never overwritten unless ``overwrite`` (nothing is copied then: a
    one-line error names the first one).

    >>> [path.name for path in copy_notebooks("my-notebooks")][:1]
    ['01_quickstart.ipynb']
    """
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise Img2ImgLabError(f"{destination} is a file, not a folder. Fix: name a folder for the notebooks.")
    notebooks = sorted(bundled_dir("notebooks").glob("*.ipynb"))
    clashes = [destination / path.name for path in notebooks if (destination / path.name).exists()]
    if clashes and not overwrite:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise Img2ImgLabError(f"{clashes[0]} already exists{more}. Fix: choose another folder, or pass --force to "
                              f"overwrite.")
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in notebooks:
        copied.append(Path(shutil.copyfile(path, destination / path.name)))
    return copied
