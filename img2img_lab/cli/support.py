"""The command line's support: reading its arguments (number lists, ``--where``, config names) and reporting what
went wrong in one line per error (what, where, the fix), never a traceback unless ``--debug``; and the libraries'
own chatter turned down."""

from __future__ import annotations

from pathlib import Path

from img2img_lab.errors import Img2ImgLabError

#: One example per command (shown by ``img2img-lab COMMAND --help``). Bundled example configs go by name.
EXAMPLES = {
    "sweep": "img2img-lab sweep quick --out runs/quick --metrics ssim,delta_e",
    "demo": "img2img-lab demo --seeds 1 --strengths 0.2,0.5,0.8",
    "info": "img2img-lab info stabilityai/sd-turbo",
    "strength": "img2img-lab strength sdxl --steps 30 --strength 0.6 --from comfyui --to diffusers",
    "measure": "img2img-lab measure runs/quick --metrics ssim,ssim@subject,delta_e@background --masks auto",
    "grid": "img2img-lab grid runs/quick --rows seed --cols strength --annotate ssim --out grid.png",
    "curves": "img2img-lab curves runs/quick --metric ssim --x log_snr --out curves.png",
    "calibrate": "img2img-lab calibrate calibrate --out runs/calibrate --rounds 2",
    "verify": "img2img-lab verify runs/quick --sample 8 --repair",
    "report": "img2img-lab report runs/quick --out quick.html",
    "export": "img2img-lab export runs/quick --csv quick.csv",
    "notebooks": "img2img-lab notebooks ./my-notebooks",
    "weights": "img2img-lab weights fetch lpips clip --to /shared/weights",
    "doctor": "img2img-lab doctor > doctor.txt",
    "consolidate": "img2img-lab consolidate runs/study",
}


#: The fix for the operating-system errors a user meets, by errno name.
_OS_FIXES = {
    "ENOSPC": "free disk space (or choose --out on another disk); finished cells are kept, rerun to resume",
    "EDQUOT": "free space within your disk quota; finished cells are kept, rerun to resume",
    "EACCES": "choose a path you can write to, or fix its permissions",
    "EPERM": "choose a path you can write to, or fix its permissions",
    "EROFS": "the file system is read-only: choose a path on a writable disk",
    "ENOTDIR": "a part of the path is a file, not a folder: choose another path",
    "EISDIR": "the path is a folder: give a file name",
    "EEXIST": "the path exists as a file: choose another path",
    "ENOENT": "check the path (a folder in it does not exist)",
    "ENAMETOOLONG": "choose a shorter path",
}


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and the fix.

    >>> import errno
    >>> os_error_message(OSError(errno.ENOSPC, "No space left on device", "runs/x/images/a.png"))
    'runs/x/images/a.png: No space left on device. Fix: free disk space (or choose --out on another disk); finished cells are kept, rerun to resume.'
    """
    import errno as errno_names

    name = errno_names.errorcode.get(error.errno or 0, "")
    fix = _OS_FIXES.get(name, "check the path and the disk, then rerun")
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or one_line(error)}. Fix: {fix}."


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened to ``limit`` characters."""
    text = " ".join(str(error).split()) or "no message"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number_list(option: str, text: str, kind) -> list:
    """``0.2,0.5`` as numbers of ``kind``; a one-line error naming the bad item."""
    values = []
    for item in text.split(","):
        try:
            values.append(kind(item.strip()))
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise Img2ImgLabError(f"{option} {text}: {item.strip()!r} is not {what}. Fix: e.g. {option} "
                                  f"{'2' if kind is int else '0.2,0.5,0.8'}.") from None
    return values


def add_axis_options(parser) -> None:
    """One option per top-level axis of the axis table that names a help (:attr:`~img2img_lab.plan.axes.Axis.cli`):
    free text repeats (``--prompt A --prompt B``), the rest takes a comma-separated list (``--strengths 0.2,0.5``)."""
    from img2img_lab.plan.axes import top_level_axes

    group = parser.add_argument_group("axes", "each replaces that axis of the config")
    for axis in top_level_axes():
        if not axis.cli:
            continue
        flag = "--" + (axis.name if axis.repeat else axis.plural).replace("_", "-")
        group.add_argument(flag, dest=f"axis_{axis.plural}", action="append" if axis.repeat else "store",
                           default=None, metavar=axis.kind.__name__.upper(), help=axis.cli)
    group.add_argument("--lora", dest="axis_lora_files", action="append", default=None, metavar="FILE",
                       help="a LoRA .safetensors file to sweep (repeat the option; 'none' for the model as it is), "
                            "instead of the config's loras")
    group.add_argument("--lora-scales", dest="axis_lora_scales", default=None, metavar="FLOAT",
                       help="comma-separated scales in [-4, 4] each --lora file runs at (default 1)")


def axis_overrides(args) -> dict:
    """``{plural: values}`` of the axis options given on the command line (see :func:`add_axis_options`)."""
    from img2img_lab.plan.axes import top_level_axes

    overrides = {}
    for axis in top_level_axes():
        given = getattr(args, f"axis_{axis.plural}", None)
        if given is None:
            continue
        flag = "--" + axis.plural.replace("_", "-")
        if axis.repeat:
            overrides[axis.plural] = list(given)
        elif axis.kind in (int, float):
            overrides[axis.plural] = number_list(flag, given, axis.kind)
        else:
            overrides[axis.plural] = [item.strip() for item in given.split(",") if item.strip()]
    files, scales = getattr(args, "axis_lora_files", None), getattr(args, "axis_lora_scales", None)
    if scales is not None and not files:
        raise Img2ImgLabError("--lora-scales needs at least one --lora FILE. Fix: add --lora style.safetensors.")
    if files:
        scales = number_list("--lora-scales", scales, float) if scales is not None else [1.0]
        overrides["loras"] = [file if file == "none" else {"file": _absolute_if_present(file),
                                                           "scales": scales} for file in files]
    return overrides


def _absolute_if_present(text: str) -> str:
    """A file argument as an absolute path where it names a file here (else as given: the plan says what is wrong)."""
    path = Path(text).expanduser()
    return str(path.absolute()) if path.exists() else text


def parse_where(items) -> dict:
    where = {}
    for item in items or []:
        if "=" not in item:
            raise Img2ImgLabError(f"--where {item!r} must look like column=value, e.g. --where seed=0.")
        column, value = item.split("=", 1)
        where[column.strip()] = value
    return where


def config_path(text: str):
    """A config argument: an existing file, else the name of a bundled example config
    (:func:`img2img_lab.resources.find_config`)."""
    from img2img_lab.resources import find_config

    return find_config(text)
