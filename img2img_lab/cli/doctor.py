"""``img2img-lab doctor``: one screen about this installation that a user can paste into a bug report.

It loads no model and downloads nothing: versions, the device and dtype a sweep would choose, torch's threads and
the count img2img-lab would use, whether the torchvision shim is active, offline mode, each metric's availability
with its fix, the default model, the weight caches, and whether a run folder can be written.

>>> report = doctor_report(run_dir="runs")
>>> report["device"], report["dtype"], report["run_folder"]["writable"]
('cpu', 'float32', True)
>>> print(format_doctor(report).splitlines()[0])  # doctest: +ELLIPSIS
img2img-lab ... (python ...)
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path


def doctor_report(*, run_dir: str | os.PathLike = "runs") -> dict:
    """Everything :func:`format_doctor` prints, as a dict (``img2img-lab doctor --json``)."""
    import torch

    from img2img_lab._utils import compat as _compat
    from img2img_lab.store.manifest import package_versions
    from img2img_lab.models.loading import DEFAULT_MODEL_ENV, resolve_model, select_device
    from img2img_lab.models.threads import THREADS_ENV, threads_for
    from img2img_lab.metrics.weight_files import lpips_checkpoint_dir, offline_mode

    device, dtype = select_device()
    gpus = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    threads, _ = threads_for(parameters=0)
    why = f"{THREADS_ENV}={os.environ[THREADS_ENV]}" if os.environ.get(THREADS_ENV) else f"half of {os.cpu_count()} cores"
    return {
        "versions": package_versions(), "platform": platform.platform(),
        "device": device.type, "dtype": str(dtype).replace("torch.", ""), "gpus": gpus,
        "threads": {"torch": torch.get_num_threads(), "cores": os.cpu_count(), "small_model": threads,
                    "why": why, "env": os.environ.get(THREADS_ENV)},
        "torchvision_shim": _compat.shim_active(), "offline": offline_mode(),
        "model": _default_model(resolve_model, DEFAULT_MODEL_ENV),
        "caches": {"huggingface": _hf_cache(), "torch_checkpoints": str(lpips_checkpoint_dir())},
        "metrics": _metrics(), "run_folder": _writable(Path(run_dir)),
    }


def _default_model(resolve_model, env_name: str) -> dict:
    from img2img_lab.errors import Img2ImgLabError

    try:
        label, folder = resolve_model(None)
    except Img2ImgLabError as error:
        return {"label": None, "folder": None, "problem": str(error)}
    return {"label": label, "folder": str(folder) if folder else None, "env": os.environ.get(env_name),
            "present": bool(folder) and (Path(folder) / "model_index.json").is_file()}


def _hf_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _metrics() -> dict:
    from img2img_lab.metrics.registry import METRICS, load_plugins
    from img2img_lab.metrics.availability import metric_status

    load_plugins()
    statuses = {}
    for name in sorted(METRICS):
        available, explanation = metric_status(name)
        statuses[name] = {"available": available, "explanation": explanation}
    return statuses


def _writable(folder: Path) -> dict:
    """Whether a run folder can be written at ``folder`` (a temporary file is created and removed there, or in the
    nearest existing parent when the folder does not exist yet)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".img2img-lab-doctor-"):
            pass
    except OSError as error:
        return {"path": str(folder), "writable": False, "problem": f"{error.strerror or error} (in {probe})"}
    return {"path": str(folder), "writable": True}


def format_doctor(report: dict) -> str:
    """The report as the screen ``img2img-lab doctor`` prints."""
    versions = report["versions"]
    from img2img_lab.models.threads import SMALL_MODEL_PARAMETERS

    threads, model, caches = report["threads"], report["model"], report["caches"]
    packages = ", ".join(f"{name} {versions[name]}" for name in versions if name not in ("python", "img2img_lab"))
    gpus = f"{len(report['gpus'])} GPU(s): {', '.join(report['gpus'])}" if report["gpus"] else "no CUDA GPU"
    lines = [
        f"img2img-lab {versions['img2img_lab']} (python {versions['python']}, {report['platform']})",
        f"packages:    {packages}",
        f"device:      {report['device']} ({gpus}); dtype {report['dtype']}",
        f"threads:     torch uses {threads['torch']} of {threads['cores']} cores now; models under "
        f"{SMALL_MODEL_PARAMETERS // 10**6} M parameters get {threads['small_model']} ({threads['why']}; "
        f"set --threads or IMG2IMG_LAB_THREADS)",
        f"torchvision: shim {'active (CUDA build beside CPU torch)' if report['torchvision_shim'] else 'inactive'}",
        f"offline:     {'yes: nothing is downloaded' if report['offline'] else 'no: metric weights download on first use'}",
        "model:       " + (f"{model['label']} at {model['folder']} ({'present' if model['present'] else 'MISSING'})"
                           if model["label"] else model["problem"]),
        f"caches:      Hugging Face {caches['huggingface']}; torch checkpoints {caches['torch_checkpoints']}",
        "run folder:  " + (f"{report['run_folder']['path']} is writable" if report["run_folder"]["writable"]
                           else f"{report['run_folder']['path']} is NOT writable: {report['run_folder']['problem']}"),
        "metrics:",
    ]
    width = max((len(name) for name in report["metrics"]), default=0)  # one column, whatever the longest name
    for name, status in report["metrics"].items():
        state = "available  " if status["available"] else "UNAVAILABLE"
        detail = "" if status["explanation"] == f"{name}: available" else f" — {status['explanation']}"
        lines.append(f"  {name:<{width}} {state}{detail}".rstrip())
    return "\n".join(lines)

