"""How many CPU threads torch uses for a model, and why.

torch's default is one thread per core. For the small models this project runs on CPUs (the embedded shapes-world
model: a few million parameters) that default is fragile: with every core busy, one other busy process makes each
thread wait for the others at every operator, and one image took 5–37 s instead of about 1 s on a shared 2-core
machine. img2img-lab therefore sets the thread count when it loads a model on the CPU:

1. ``--threads N`` on the command line, or ``$IMG2IMG_LAB_THREADS`` (the CLI flag sets the variable);
2. else, for a model under :data:`SMALL_MODEL_PARAMETERS`, half the cores (at least 1, at most 4), leaving room for
   whatever else runs;
3. else torch's own default (large models on CPU use every core).

The count used is recorded in every row (``torch_threads``) and in the manifest; ``verify`` regenerates a batched
cell with the count that made it (the count changes batched pixels by up to 1/255).

>>> threads_for(parameters=3_000_000, cores=2, environ={})
(1, 'small model (3 M parameters): half of 2 cores')
>>> threads_for(parameters=3_000_000, cores=2, environ={"IMG2IMG_LAB_THREADS": "2"})
(2, 'IMG2IMG_LAB_THREADS=2')
>>> threads_for(parameters=860_000_000, cores=16, environ={})
(None, "large model (860 M parameters): torch's default")
"""

from __future__ import annotations

import os

from img2img_lab.errors import Img2ImgLabError

THREADS_ENV = "IMG2IMG_LAB_THREADS"
#: Models below this many parameters count as small (the embedded model has about 3 M, SD 1.5 about 1 G).
SMALL_MODEL_PARAMETERS = 100_000_000
MAX_SMALL_MODEL_THREADS = 4


def requested_threads(environ=None) -> int | None:
    """The thread count asked for with ``$IMG2IMG_LAB_THREADS`` (None: not set); a one-line error if malformed."""
    value = (os.environ if environ is None else environ).get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise Img2ImgLabError(f"{THREADS_ENV}={value!r} must be a whole number of threads >= 1. Fix: e.g. "
                              f"{THREADS_ENV}=2, or unset it for the default.")
    return int(value)


def threads_for(*, parameters: int, cores: int | None = None, environ=None) -> tuple[int | None, str]:
    """``(threads, why)`` for a model of ``parameters`` on ``cores`` CPU cores (None: leave torch's default)."""
    requested = requested_threads(environ)
    if requested is not None:
        return requested, f"{THREADS_ENV}={requested}"
    cores = cores or os.cpu_count() or 1
    millions = f"{parameters / 1e6:.0f} M parameters"
    if parameters < SMALL_MODEL_PARAMETERS:
        threads = max(1, min(MAX_SMALL_MODEL_THREADS, cores // 2))
        return threads, f"small model ({millions}): half of {cores} cores"
    return None, f"large model ({millions}): torch's default"


def pipeline_parameters(pipe) -> int:
    """The parameters of every component of a pipeline (what :data:`SMALL_MODEL_PARAMETERS` is compared with).

    >>> pipeline_parameters(pipe) < SMALL_MODEL_PARAMETERS
    True
    """
    return sum(parameter.numel() for component in pipe.components.values()
               if hasattr(component, "parameters") for parameter in component.parameters())


def apply_threads(pipe) -> tuple[int, str]:
    """Set torch's thread count for a pipeline loaded on the CPU (see the module doc); returns ``(threads, why)``.
    On a GPU nothing changes."""
    import torch

    if pipe.device.type != "cpu":
        return torch.get_num_threads(), f"{pipe.device.type}: the CPU thread count does not matter"
    threads, why = threads_for(parameters=pipeline_parameters(pipe))
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads(), why
