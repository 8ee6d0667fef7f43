"""Load any diffusers img2img pipeline as a :class:`~img2img_lab.models.handle.ModelHandle`: decide what a model
name means (the embedded model, a folder, a hub id; offline rules), pick device and dtype, import only the pipeline
class the model names, set torch's threads. Everything else about a loaded model is asked of its handle.

>>> sd15 = load_model("runwayml/stable-diffusion-v1-5", scheduler="euler")  # downloads 4 GB  # doctest: +SKIP
>>> load_model().size_multiple()  # the embedded model's VAE downsamples 4x
4
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from img2img_lab.errors import ModelError
from img2img_lab.models.handle import ModelHandle
from img2img_lab.models.kept import kept_path
from img2img_lab.models.registry import FAMILIES, IMG2IMG_PIPELINE_OF, NO_STRENGTH, REFUSED
from img2img_lab.models.threads import apply_threads
from img2img_lab.resources import embedded_controlnet_dir, embedded_model_dir

#: Where the embedded default model lives (issue #4 trains and commits it).
EMBEDDED_MODEL_DIR = embedded_model_dir()

#: The name of the embedded model with its ControlNet (a ControlNet img2img pipeline; control: {image: silhouette}).
EMBEDDED_CONTROLNET = "embedded-controlnet"
EMBEDDED_CONTROLNET_LABEL = "embedded:shapes-world-controlnet"

#: Environment variable that overrides the default model (hub id or folder).
DEFAULT_MODEL_ENV = "IMG2IMG_LAB_MODEL"


def select_device(device: str | None = None, dtype: str | None = None):
    """Resolve ``(torch.device, torch.dtype)``: CUDA fp16 where available, else Apple MPS fp16, else CPU fp32.

    >>> select_device("cpu")
    (device(type='cpu'), torch.float32)
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ModelError(f"unknown device {device!r} ({error}). Fix: use 'cpu', 'cuda', 'cuda:1' or 'mps'.") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but torch sees no CUDA GPU. Fix: use device='cpu'.")
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
              "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype is None:
        torch_dtype = torch.float16 if torch_device.type in ("cuda", "mps") else torch.float32
    elif isinstance(dtype, torch.dtype):
        torch_dtype = dtype
    elif str(dtype) in dtypes:
        torch_dtype = dtypes[str(dtype)]
    else:
        raise ModelError(f"unknown dtype {dtype!r}. Fix: use one of {', '.join(dtypes)}.")
    return torch_device, torch_dtype


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def resolve_model(model: str | os.PathLike | None) -> tuple[str, Path | None]:
    """Decide what ``model`` names: ``(label, local_folder_or_None_for_hub)``. Fast; loads nothing.

    Raises :class:`ModelError` for a missing folder, a folder that is not a diffusers pipeline,
    a malformed hub id, or a hub id that is not cached while offline.

    >>> resolve_model("./no/such/folder")
    Traceback (most recent call last):
    ...
    img2img_lab.errors.ModelError: model folder './no/such/folder' does not exist. ...
    """
    if model is None:
        model = os.environ.get(DEFAULT_MODEL_ENV) or None
    if model is None:
        if not (EMBEDDED_MODEL_DIR / "model_index.json").exists():
            raise ModelError(
                f"no model given and the embedded default model is missing at {EMBEDDED_MODEL_DIR}. "
                f"Fix: reinstall img2img-lab (`pip install --force-reinstall img2img-lab`: the wheel carries it), "
                f"or pass a diffusers img2img model (a hub id such as 'runwayml/stable-diffusion-v1-5' or a local "
                f"diffusers folder), or set ${DEFAULT_MODEL_ENV}."
            )
        return "embedded:shapes-world", EMBEDDED_MODEL_DIR
    text = str(model)
    if text in (EMBEDDED_CONTROLNET, EMBEDDED_CONTROLNET_LABEL):
        if not (embedded_controlnet_dir() / "config.json").exists():
            raise ModelError(f"the embedded model's ControlNet is missing at {embedded_controlnet_dir()}. Fix: "
                             f"reinstall img2img-lab, or train it: python -m img2img_lab.shapes.train_controlnet.")
        return EMBEDDED_CONTROLNET_LABEL, EMBEDDED_MODEL_DIR
    path = Path(text).expanduser()
    # A hub id is "name" or "owner/name"; anything else that does not exist is a missing folder.
    looks_like_path = (
        isinstance(model, os.PathLike)
        or text.startswith((".", "/", "~"))
        or text.endswith("/")
        or text.count("/") > 1
        or "\\" in text
    )
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path '{text}' is a file; a diffusers model is a folder. Fix: pass the folder.")
        if not (path / "model_index.json").exists():
            raise ModelError(
                f"folder '{text}' is not a diffusers pipeline (no model_index.json in it). "
                f"Fix: pass the folder written by pipeline.save_pretrained(...), e.g. a hub snapshot folder."
            )
        return text, path.resolve()
    if looks_like_path or not _HUB_ID.match(text):
        raise ModelError(
            f"model folder '{text}' does not exist. Fix: check the path, or pass a hub id such as "
            f"'runwayml/stable-diffusion-v1-5'."
        )
    if _hub_offline() and cached_model_index(text) is None:
        raise ModelError(
            f"'{text}' is not a local folder and is not in the Hugging Face cache, and offline mode is on "
            f"(HF_HUB_OFFLINE=1). Fix: download it once while online (`hf download {text}`), or pass the "
            f"path of a local diffusers folder."
        )
    return text, None


def load_pipeline(model: str | os.PathLike | None = None, **options):
    """The diffusers pipeline of :func:`load_model` (``load_model(model, **options).pipe``).

    >>> type(load_pipeline()).__name__  # the embedded shapes-world model
    'StableDiffusionImg2ImgPipeline'
    """
    return load_model(model, **options).pipe


def load_model(
    model: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    scheduler: str | None = None,
    variant: str | None = None,
    threads: int | str | None = "auto",
):
    """Load an img2img pipeline from a hub id, a local diffusers folder, or the embedded default, as a
    :class:`~img2img_lab.models.handle.ModelHandle` (``.pipe`` is the diffusers pipeline).

    Imports only the img2img pipeline class the model names (:func:`img2img_pipeline_class`), else goes through
    :class:`diffusers.AutoPipelineForImage2Image`, so any model with an img2img pipeline works
    (Stable Diffusion 1.x/2.x, SDXL, turbo models...). Device/dtype default to CUDA fp16 when a GPU is
    present, else CPU fp32. The pipeline's inner progress bar is disabled (sweeps show their own). On the CPU,
    ``threads="auto"`` sets torch's thread count for the model (:mod:`img2img_lab.models.threads`: ``$IMG2IMG_LAB_THREADS``,
    else half the cores for a small model); an int sets it; None leaves torch's setting alone.

    >>> turbo = load_model("stabilityai/sd-turbo", scheduler="euler_a")  # downloads 5 GB  # doctest: +SKIP
    >>> load_model().family.name  # the embedded shapes-world model
    'sd'
    """
    if threads not in ("auto", None) and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ModelError(f"threads={threads!r} must be 'auto', None or a whole number >= 1. Fix: e.g. threads=2.")
    label, folder = resolve_model(model)
    torch_device, torch_dtype = select_device(device, dtype)
    pipeline_class = img2img_pipeline_class(label, folder)
    from img2img_lab._utils.quiet import apply_quiet, loading_bars_off

    apply_quiet()  # diffusers and transformers are imported now: their loading bars stay off if the CLI asked
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if variant:
        kwargs["variant"] = variant
    if folder is None and _hub_offline():
        kwargs["local_files_only"] = True
    if label == EMBEDDED_CONTROLNET_LABEL:  # the embedded model's components with its ControlNet
        from diffusers import ControlNetModel

        kwargs["controlnet"] = ControlNetModel.from_pretrained(str(embedded_controlnet_dir()), dtype=torch_dtype)
    try:
        with loading_bars_off():  # a sweep shows its own progress; a notebook keeps no frozen loading bars
            pipe = pipeline_class.from_pretrained(str(folder) if folder else label, **kwargs)
    except (OSError, ValueError, KeyError, EnvironmentError) as error:
        raise ModelError(
            f"could not load '{label}' as a diffusers img2img pipeline: {error}. "
            f"Fix: check that the model has an img2img pipeline and all its files are present."
        ) from error
    pipe = pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    handle = ModelHandle(pipe, label=label, folder=str(folder) if folder else None,
                         threads_reason=_set_threads(pipe, threads))
    snapshot = folder if folder is not None else getattr(cached_model_index(label), "parent", None)
    if label == EMBEDDED_CONTROLNET_LABEL:  # kept by the files of the model and of its ControlNet
        snapshot = embedded_controlnet_dir().parent
    handle.keep_fingerprint_at(kept_path("fingerprints", label, snapshot, str(torch_device), str(torch_dtype)))
    if scheduler is not None:
        handle.use_scheduler(str(scheduler).lower())
    return handle


def img2img_pipeline_class(label: str, folder: Path | None):
    """The img2img pipeline class for a model: the one its ``model_index.json`` names (``_class_name``: an img2img,
    inpainting or ControlNet pipeline, or one img2img-lab refuses by name; else that pipeline's img2img sibling from
    :data:`~img2img_lab.models.registry.IMG2IMG_PIPELINE_OF`), imported alone; else (another pipeline, or a hub
    model not downloaded yet) ``AutoPipelineForImage2Image``, whose import costs 1-2 s more (every ControlNet).

    >>> img2img_pipeline_class("embedded:shapes-world", EMBEDDED_MODEL_DIR).__name__
    'StableDiffusionImg2ImgPipeline'
    """
    import diffusers

    if label == EMBEDDED_CONTROLNET_LABEL:
        return diffusers.StableDiffusionControlNetImg2ImgPipeline
    index = Path(folder) / "model_index.json" if folder is not None else cached_model_index(label)
    try:
        named = json.loads(index.read_text()).get("_class_name") if index is not None else None
    except (OSError, ValueError, AttributeError):
        named = None
    if named is not None and not isinstance(named, str):
        raise ModelError(f"{index}: _class_name is {json.dumps(named)[:120]}, not a pipeline class name (a list names "
                         f"a custom pipeline's code, which img2img-lab does not run). Fix: use a model whose "
                         f"model_index.json names a diffusers pipeline, e.g. \"StableDiffusionPipeline\".")
    known = isinstance(named, str) and (named.endswith("Img2ImgPipeline") or named in FAMILIES or named in NO_STRENGTH
                                        or named in REFUSED)  # an inpainting, ControlNet or reference pipeline
    name = named if known else IMG2IMG_PIPELINE_OF.get(named)
    if name and hasattr(diffusers, name):
        return getattr(diffusers, name)
    return diffusers.AutoPipelineForImage2Image


def cached_model_index(label: str) -> Path | None:
    """A hub model's ``model_index.json`` in the Hugging Face cache, if it is there (else ``None``).

    >>> cached_model_index("no-such-owner/no-such-model") is None
    True
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(label, "model_index.json")
    except ValueError:  # not a repository id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _set_threads(pipe, threads: int | str | None) -> str:
    """Apply the ``threads`` choice of :func:`load_model`; return why the count is what it is."""
    import torch

    if threads == "auto":
        return apply_threads(pipe)[1]
    if threads is None:
        return "left as the caller set it (threads=None)"
    torch.set_num_threads(threads)
    return f"threads={threads} given to load_model"
