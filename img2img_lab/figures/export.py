"""A study where researchers keep and compare theirs: a Hugging Face dataset, an MLflow run, a Weights & Biases table.

Every target gets the tidy table whole (one row per generated image, every column kept) with two image columns,
``output`` (the generated image) and ``source_image`` (the source as the model saw it), read through the run store
(so a folder someone else prepared is checked as every reader checks it, :mod:`img2img_lab.store.folder_rules`):

* ``hf-dataset DIR``: ``DIR/data/train-00000-of-00001.parquet`` (images embedded as PNG bytes) and a dataset card,
  ``README.md``, so ``datasets.load_dataset(DIR)`` loads it offline with decoded image columns;
* ``mlflow``: one run per study in the experiment ``img2img-lab`` of ``--tracking-uri`` (default: MLflow's own):
  the plan as parameters, the table with its images as an MLflow table (``results.json``), the comparison grid
  and the SSIM curve as artifacts;
* ``wandb [DIR]``: one run in ``--project`` (default ``img2img-lab``), offline unless ``WANDB_MODE`` says otherwise
  (``wandb sync`` uploads it later): the plan as its config, a ``wandb.Table`` with ``wandb.Image`` columns, kept
  with its images as the artifact ``results``.

The packages are optional (``pip install 'img2img-lab[export]'``); a missing one is a one-line error naming the extra.

>>> export_run("runs/demo", "hf-dataset", to="exported/demo")  # doctest: +ELLIPSIS
'.../exported/demo'
>>> from datasets import load_dataset
>>> load_dataset("exported/demo", split="train").num_rows
6
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from img2img_lab.errors import Img2ImgLabError
from img2img_lab.store.run_store import RunStore

TARGETS = ("hf-dataset", "mlflow", "wandb")
#: MLflow keeps a parameter value of at most this many characters.
MLFLOW_PARAM_LIMIT = 6000


def export_run(run_dir, target: str, *, to=None, tracking_uri: str | None = None, project: str = "img2img-lab") -> str:
    """Export the run folder ``run_dir`` to ``target`` (see the module doc); returns where it went (a folder, or an
    MLflow run id)."""
    if target not in TARGETS:
        raise Img2ImgLabError(f"unknown export target {target!r}. Fix: use one of {', '.join(TARGETS)}.")
    store = RunStore.open(run_dir)
    table = store.read_table()
    if table.empty:
        raise Img2ImgLabError(f"{run_dir}: no finished cells to export. Fix: run the sweep first.")
    if target == "hf-dataset":
        if to is None:
            raise Img2ImgLabError("--to hf-dataset needs a folder. Fix: `img2img-lab export RUN --to hf-dataset DIR`.")
        return to_hf_dataset(store, table, Path(to))
    if target == "mlflow":
        return to_mlflow(store, table, tracking_uri=tracking_uri)
    return to_wandb(store, table, project=project, directory=Path(to) if to is not None else Path("wandb-runs"))


def _require(module: str):
    """Import an optional package, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"datasets": "datasets", "mlflow": "mlflow-skinny", "wandb": "wandb"}[module]
        raise Img2ImgLabError(f"exporting there needs the {package} package, which is not installed. Fix: "
                              f"pip install 'img2img-lab[export]' (or pip install {package}).") from None


def _png(image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def _images(store: RunStore, table):
    """``(outputs, sources)``: each row's generated image and its source, as PIL images, read through the store."""
    sources = {source_hash: store.load_source(source_hash) for source_hash in table["source_hash"].unique()}
    outputs = [store.load_output(row) for row in table.to_dict("records")]
    return outputs, [sources[source_hash] for source_hash in table["source_hash"]]


def _plan_summary(store: RunStore) -> dict:
    """The plan of the folder, flattened to scalars (lists as JSON text)."""
    plan = store.read_manifest().get("plan") or {}
    return {name: value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
            for name, value in plan.items()}


def to_hf_dataset(store: RunStore, table, folder: Path) -> str:
    """A Hugging Face dataset folder (Parquet with embedded PNGs, and a card naming its features)."""
    datasets = _require("datasets")
    outputs, sources = _images(store, table)
    frame = table.assign(output=[{"bytes": _png(image), "path": None} for image in outputs],
                         source_image=[{"bytes": _png(image), "path": None} for image in sources])
    dataset = datasets.Dataset.from_pandas(frame, preserve_index=False)
    dataset = dataset.cast_column("output", datasets.Image()).cast_column("source_image", datasets.Image())
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(data / "train-00000-of-00001.parquet"))
    card = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n"
            f"# img2img-lab study: {store.root.name}\n\nOne row per generated image ({len(table)} rows): every column of "
            f"the run folder's results table, the image (`output`) and its source as the model saw it "
            f"(`source_image`).\n")
    (folder / "README.md").write_text(card)
    return str(folder.resolve())


def to_mlflow(store: RunStore, table, *, tracking_uri: str | None) -> str:
    """One MLflow run: the plan as parameters, the table with images as ``results.json``, grid and curve
    artifacts; returns the run id."""
    import tempfile

    mlflow = _require("mlflow")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("img2img-lab")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("img2img-lab")
    run = client.create_run(experiment_id, run_name=store.root.name)
    for name, value in _plan_summary(store).items():
        client.log_param(run.info.run_id, name, str(value)[:MLFLOW_PARAM_LIMIT])
    outputs, sources = _images(store, table)
    frame = table.assign(output=[mlflow.Image(image) for image in outputs],
                         source_image=[mlflow.Image(image) for image in sources])
    client.log_table(run.info.run_id, data=_json_safe(frame), artifact_file="results.json")
    with tempfile.TemporaryDirectory(prefix="img2img-lab-export-") as scratch:
        for path in _figures(store, Path(scratch)):
            client.log_artifact(run.info.run_id, str(path), artifact_path="figures")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def to_wandb(store: RunStore, table, *, project: str, directory: Path) -> str:
    """One W&B run (offline unless ``WANDB_MODE`` is set): the plan as config, a table with image columns, logged
    and kept as the artifact ``results`` (W&B keeps a table's images only in an artifact; offline, its files are
    staged in ``directory/data`` unless ``WANDB_DATA_DIR`` says where, for ``wandb sync``)."""
    wandb = _require("wandb")
    directory.mkdir(parents=True, exist_ok=True)
    staging = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = staging or str((directory / "data").resolve())
    try:
        return _log_wandb_run(wandb, store, table, project=project, directory=directory)
    finally:
        if staging is None:
            os.environ.pop("WANDB_DATA_DIR", None)


def _log_wandb_run(wandb, store: RunStore, table, *, project: str, directory: Path) -> str:
    run = wandb.init(project=project, name=store.root.name, dir=str(directory), config=_plan_summary(store),
                     mode=os.environ.get("WANDB_MODE") or "offline", reinit="create_new")
    outputs, sources = _images(store, table)
    frame = _json_safe(table)
    results = wandb.Table(columns=[*frame.columns, "output", "source_image"])
    for values, output, source in zip(frame.itertuples(index=False), outputs, sources):
        results.add_data(*values, wandb.Image(output), wandb.Image(source))
    artifact = wandb.Artifact("results", type="dataset", description=f"img2img-lab study {store.root.name}")
    artifact.add(results, "results")
    run.log({"results": results})
    run.log_artifact(artifact)
    run.finish()
    return str(Path(run.dir).parent)


def _json_safe(table):
    """The table with values every tracker can store: lists and arrays (a row's ``timesteps``) as JSON text.

    >>> import numpy as np, pandas as pd
    >>> _json_safe(pd.DataFrame({"timesteps": [np.array([999, 499])], "seed": [0]}))["timesteps"].tolist()
    ['[999, 499]']
    """
    import numpy as np

    frame = table.copy()
    for column in frame.columns:
        if frame[column].map(lambda value: isinstance(value, (list, tuple, dict, np.ndarray))).any():
            frame[column] = frame[column].map(lambda value: json.dumps(
                value.tolist() if isinstance(value, np.ndarray) else value, default=str))
    return frame


def _figures(store: RunStore, folder: Path) -> list[Path]:
    """The comparison grid (prompt x strength of the first source and seed; left out where more conditions vary) and
    the SSIM curve (when measured) of the folder, as PNG files in ``folder``."""
    import matplotlib.pyplot as plt

    from img2img_lab.figures.grids import comparison_grid, save_png, strength_curves

    table = store.read_table()
    paths = []
    where = {"source_name": table["source_name"].iloc[0], "seed": int(table["seed"].iloc[0])}
    try:
        grid = comparison_grid(store.root, rows="prompt", cols="strength", where=where)
    except Img2ImgLabError:  # guidance, steps or models vary too: no one grid stands for the study
        grid = None
    if grid is not None:
        save_png(grid, folder / "grid.png")
        paths.append(folder / "grid.png")
    if "ssim" in table.columns:
        figure = strength_curves(store.root, "ssim")
        figure.savefig(folder / "curves_ssim.png")
        plt.close(figure)
        paths.append(folder / "curves_ssim.png")
    return paths
