"""The ``img2img-lab`` command line.

::

    img2img-lab [--debug] [--offline] [--threads N] [--version] COMMAND ...
    img2img-lab sweep CONFIG.yaml --out RUN_DIR [--model M] [--metrics ssim,...] [--engine batched|per-cell]
                     [--max-batch N] [--cache DIR] [--device cpu|cuda] [--dtype ...]
    img2img-lab demo [--out runs/demo] [--seeds N] [--strengths 0.2,0.5]
    img2img-lab info [MODEL] [--json]
    img2img-lab strength MODEL --steps N [--strength S] [--size PX] [--from TOOL --to TOOL] [--plot map.png]
                         [--a1111-sampler S] [--a1111-schedule S] [--comfyui-scheduler S] [--invokeai-scheduler S]
    img2img-lab measure RUN_DIR [--metrics ssim,psnr,...]
    img2img-lab grid RUN_DIR [--rows seed] [--cols strength] [--annotate ssim,lpips] [--border ssim]
                     [--where prompt="a cat"] --out grid.png
    img2img-lab curves RUN_DIR --metric ssim [--x strength|executed_steps|sqrt_alpha_bar|sigma|log_snr]
                     [--hue prompt]
                     --out curves.png
    img2img-lab calibrate CONFIG.yaml [--out RUN_DIR] [--model M] [--rounds N] [--rule confident|mean]
                     [--bootstrap B]
    img2img-lab verify RUN_DIR [--sample 8] [--seed 0] [--repair [--yes]]
    img2img-lab report RUN_DIR [--out report.html]
    img2img-lab export RUN_DIR [--csv table.csv] [--parquet table.parquet] [--to hf-dataset DIR | mlflow | wandb]
    img2img-lab notebooks [FOLDER] [--force]
    img2img-lab weights fetch|list [lpips] [lpips-vgg] [lpips-squeeze] [clip] [--to DIR]
    img2img-lab doctor [--json] [--run-dir runs]

Errors in the user's input print one line ``error: ...`` (with the fix) and exit with status 2; so do operating
system errors (disk full, permission denied, not a directory: the path and the fix), and any unexpected failure
(its type and message, and a pointer to ``--debug``, which shows the traceback).

This module builds the parser and runs a command; what each command does is in :mod:`img2img_lab.cli.commands`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys

from img2img_lab.cli import commands as handlers
from img2img_lab.sweep import distributed
from img2img_lab.cli.support import EXAMPLES, add_axis_options, one_line, os_error_message
from img2img_lab.sweep.advisories import one_line_warnings
from img2img_lab.errors import Img2ImgLabError
from img2img_lab._utils.quiet import quiet_model_libraries


def build_parser() -> argparse.ArgumentParser:
    """The ``img2img-lab`` parser: the global options, then the commands that make a study, read a run folder, and
    look after the installation."""
    from img2img_lab._utils.version import __version__

    parser = argparse.ArgumentParser(
        prog="img2img-lab",
        description="Measure what the img2img strength dial does for your model, image and prompt.",
    )
    parser.add_argument("--version", action="version", version=f"img2img-lab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    parser.add_argument("--offline", action="store_true",
                        help="download nothing (sets HF_HUB_OFFLINE=1): missing metric weights make metrics unavailable")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (sets IMG2IMG_LAB_THREADS; default: half the cores for small models)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="`img2img-lab COMMAND --help` shows its options and an example")
    _add_study_commands(commands)
    _add_run_folder_commands(commands)
    _add_tool_commands(commands)
    return parser


def _command(commands, name: str, help: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=help, description=help, epilog=f"example:\n  {EXAMPLES[name]}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_model_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    sub.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: fp16 on GPU)")


def _add_memory_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("memory", "how the model fits the machine (over the config's memory: settings)")
    group.add_argument("--offload", default=None, help="none, model or sequential: diffusers' CPU offload (needs a GPU)")
    group.add_argument("--vae-tiling", action="store_true", default=None, help="decode large images tile by tile")
    group.add_argument("--vae-slicing", action="store_true", default=None, help="decode a batch one image at a time")
    group.add_argument("--attention-slicing", action="store_true", default=None, help="attention in slices (UNets)")
    group.add_argument("--memory-budget", default=None,
                       help="memory the batched engine may fill, e.g. 6GB, or auto (default on CUDA)")


def _add_run_dir(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("run_dir", help="a run folder written by sweep, demo or calibrate")


_NO_PROGRESS = {"action": "store_true", "help": "hide the progress bar"}
_CONFIG_HELP = "YAML config file, or the name of a bundled example (quick, demo, guidance, calibrate, inpaint, modes)"


def _add_study_commands(commands) -> None:
    """sweep, demo, info: the commands that load a model."""
    command = functools.partial(_command, commands)
    sweep = command("sweep", "run a strength sweep from a YAML config into a run folder")
    sweep.add_argument("config", help=_CONFIG_HELP)
    sweep.add_argument("--out", required=True, help="run folder to write (rerun to resume or extend)")
    sweep.add_argument("--model", default=None, help="override the config's model (hub id or folder)")
    sweep.add_argument("--no-progress", **_NO_PROGRESS)
    sweep.add_argument("--metrics", default="", help="measure as the sweep goes, e.g. ssim,psnr,delta_e")
    sweep.add_argument("--engine", default="batched", choices=["batched", "per-cell"],
                       help="batched (default; within 1/255 of per-cell, faster) or the per-cell reference")
    sweep.add_argument("--max-batch", type=int, default=None, help="UNet samples per call (default by device)")
    sweep.add_argument("--cache", default=None, help="shared cache folder: reuse cells any run put there, add new ones")
    _add_model_options(sweep)
    _add_memory_options(sweep)
    add_axis_options(sweep)
    sweep.set_defaults(handler=handlers.cmd_sweep)

    demo = command("demo", "offline demo on the embedded model: sweep, measure, grids, curves")
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--seeds", default=None, help="number of seeds, at least 1 (default: the config's 3)")
    demo.add_argument("--strengths", default=None, help="comma-separated strengths in [0, 1] (default: the config's 8)")
    demo.add_argument("--no-progress", **_NO_PROGRESS)
    demo.set_defaults(handler=handlers.cmd_demo)

    info = command("info", "describe a model: components, size, scheduler, size rules")
    info.add_argument("model", nargs="?", default=None, help="hub id or diffusers folder (default: embedded model)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--reload", action="store_true",
                      help="load the model even if its description is kept from an earlier info (files unchanged)")
    _add_model_options(info)
    info.set_defaults(handler=handlers.cmd_info)

    strength = command("strength", "what a strength runs in diffusers, AUTOMATIC1111/Forge, ComfyUI and InvokeAI")
    from img2img_lab.models.registry import BUNDLED_SCHEDULERS  # declared by the family modules

    strength.add_argument("model", help=f"a bundled scheduler ({', '.join(BUNDLED_SCHEDULERS)}), a diffusers folder or "
                                        f"a cached hub id")
    strength.add_argument("--steps", type=int, required=True, help="the tool's steps setting")
    strength.add_argument("--strength", type=float, default=None, help="strength / denoise to translate")
    strength.add_argument("--size", type=int, default=None, help="image side in px (FLUX.1's shift depends on it)")
    strength.add_argument("--from", dest="source", default=None, help="the tool the strength is for (with --to)")
    strength.add_argument("--to", dest="target", default=None, help="the tool to translate it to (nearest log-SNR)")
    strength.add_argument("--plot", default=None, help="PNG: start log-SNR and executed steps against strength")
    strength.add_argument("--a1111-sampler", default=None, help="AUTOMATIC1111 sampler (default: DPM++ 2M, its UI's)")
    strength.add_argument("--a1111-schedule", default=None,
                          help="AUTOMATIC1111 schedule type: automatic (the sampler's), uniform, normal, karras, "
                               "exponential, sgm_uniform, simple (default: automatic)")
    strength.add_argument("--comfyui-scheduler", default=None,
                          help="ComfyUI KSampler scheduler: simple, sgm_uniform, karras, exponential, normal "
                               "(default: simple, the node's)")
    strength.add_argument("--invokeai-scheduler", default=None,
                          help="InvokeAI scheduler name, e.g. euler, dpmpp_2m_k (default: dpmpp_3m_k, its UI's)")
    strength.set_defaults(handler=handlers.cmd_strength)


def _add_run_folder_commands(commands) -> None:
    """measure, grid, curves, calibrate, verify, report, export: the commands over a run folder."""
    command = functools.partial(_command, commands)
    measure = command("measure", "add metric columns to a run folder (only missing values)")
    _add_run_dir(measure)
    measure.add_argument("--metrics", default=None, help="comma-separated (default: ssim,ms_ssim,psnr,delta_e,edge_f1,lpips)")
    measure.add_argument("--device", default=None, help="device for LPIPS / CLIP (default cpu)")
    measure.add_argument("--masks", default=None, help="subject masks for region metrics (ssim@subject, "
                         "delta_e@background): auto, oracle (embedded model) or a FOLDER of <source name>.png; "
                         "default: the folder's stored masks, else auto")
    measure.add_argument("--no-progress", **_NO_PROGRESS)
    measure.set_defaults(handler=handlers.cmd_measure)

    grid = command("grid", "draw a labelled comparison grid PNG from a run folder")
    _add_run_dir(grid)
    grid.add_argument("--rows", default="seed", help="table column for rows (default seed)")
    grid.add_argument("--cols", default="strength", help="table column for columns (default strength)")
    grid.add_argument("--annotate", default="", help="comma-separated metrics printed under each image")
    grid.add_argument("--border", default=None, help="metric that colours each image's border")
    grid.add_argument("--where", action="append", help="pin an axis: column=value (repeatable)")
    grid.add_argument("--scale", type=int, default=None, help="integer upscaling of each image")
    grid.add_argument("--out", required=True, help="PNG file to write")
    grid.set_defaults(handler=handlers.cmd_grid)

    curves = command("curves", "plot a metric against strength (mean and spread over seeds)")
    _add_run_dir(curves)
    curves.add_argument("--metric", required=True, help="a measured metric column, e.g. ssim")
    curves.add_argument("--x", default="strength", help="strength, executed_steps, sqrt_alpha_bar, sigma or log_snr (any family)")
    curves.add_argument("--hue", default="prompt", help="one line per value of this column ('' for none)")
    curves.add_argument("--where", action="append", help="pin an axis: column=value (repeatable)")
    curves.add_argument("--out", required=True, help="PNG file to write")
    curves.set_defaults(handler=handlers.cmd_curves)

    calibrate = command("calibrate", "measure the strength reference table and recommend strengths")
    calibrate.add_argument("config", help="calibration config: " + _CONFIG_HELP)
    calibrate.add_argument("--out", default=None, help="run folder (default runs/<config name>); a cache")
    calibrate.add_argument("--model", default=None, help="override the config's model (hub id or folder)")
    calibrate.add_argument("--rounds", type=int, default=None, help="refinement rounds (default: the config's)")
    calibrate.add_argument("--rule", default=None, choices=["confident", "mean"], help="decide on the CI or the mean")
    calibrate.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 2000)")
    calibrate.add_argument("--no-progress", **_NO_PROGRESS)
    _add_model_options(calibrate)
    calibrate.set_defaults(handler=handlers.cmd_calibrate)

    verify = command("verify", "check a run folder's files and regenerate a sample of cells")
    _add_run_dir(verify)
    verify.add_argument("--sample", type=int, default=8, help="cells to regenerate (0: check files only)")
    verify.add_argument("--seed", type=int, default=0, help="which cells are sampled")
    verify.add_argument("--device", default=None, help="default: the device the run used")
    verify.add_argument("--repair", action="store_true",
                        help="first regenerate or re-adopt what is missing or damaged (says what it cannot)")
    verify.add_argument("--yes", action="store_true",
                        help="let --repair sweep more than 50 plans or regenerate more than 500 cells")
    verify.set_defaults(handler=handlers.cmd_verify)

    report = command("report", "write one self-contained HTML report of a run folder")
    _add_run_dir(report)
    report.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    report.set_defaults(handler=handlers.cmd_report)

    export = command("export", "write the tidy table as CSV / Parquet, or the study with its images to a Hugging "
                               "Face dataset, an MLflow run or a W&B table")
    _add_run_dir(export)
    export.add_argument("--csv", default=None, help="CSV file to write")
    export.add_argument("--parquet", default=None, help="Parquet file to write")
    export.add_argument("--to", nargs="+", metavar=("TARGET", "DIR"), default=None,
                        help="hf-dataset DIR, mlflow, or wandb [DIR] (needs the 'export' extra)")
    export.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's own)")
    export.add_argument("--project", default="img2img-lab", help="W&B project")
    export.set_defaults(handler=handlers.cmd_export)


def _add_tool_commands(commands) -> None:
    """notebooks, weights, consolidate, doctor: the installation and the folder's upkeep."""
    command = functools.partial(_command, commands)
    notebooks = command("notebooks", "copy the bundled notebooks into a folder (they find the bundled data themselves)")
    notebooks.add_argument("folder", nargs="?", default="img2img-lab-notebooks",
                           help="where to copy them (default ./img2img-lab-notebooks; created if needed)")
    notebooks.add_argument("--force", action="store_true", help="overwrite notebooks of the same name")
    notebooks.set_defaults(handler=handlers.cmd_notebooks)

    weights = command("weights", "fetch metric weights (LPIPS backbones, CLIP) or list what is here")
    weights.add_argument("action", choices=["fetch", "list"], help="fetch: download what is missing; list: show")
    weights.add_argument("names", nargs="*", help="lpips, lpips-vgg, lpips-squeeze, clip (fetch default: lpips)")
    weights.add_argument("--to", default=None, help="pre-seed this folder instead of the caches (then set "
                                                    "TORCH_HOME=DIR and HF_HOME=DIR/huggingface where it is used)")
    weights.set_defaults(handler=handlers.cmd_weights)

    consolidate = command("consolidate", "rebuild results.parquet from every row file (after a failed multi-rank job)")
    _add_run_dir(consolidate)
    consolidate.set_defaults(handler=handlers.cmd_consolidate)

    doctor = command("doctor", "one screen about this installation, for a bug report")
    doctor.add_argument("--run-dir", default="runs", help="check that a run folder can be written here (default runs)")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.add_argument("--fit", default=None, metavar="MODEL",
                        help="will MODEL fit here: a folder, a hub id (its configs only) or a bundled architecture "
                             "(sd15, sdxl, sd35-medium, flux-dev-reduced); parameters, memory per dtype, settings")
    doctor.set_defaults(handler=handlers.cmd_doctor)


@contextlib.contextmanager
def _quiet_unless_main(context):
    """Silence stdout on every rank but 0 of a launched job; leave the job's process group when done."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull if not context.is_main else sys.stdout):
        try:
            yield
        finally:
            distributed.leave()


def _apply_global_options(args: argparse.Namespace) -> None:
    """``--offline`` and ``--threads`` work through the environment, so every library (and child process) sees them."""
    import os

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["IMG2IMG_LAB_OFFLINE"] = "1"
    if args.threads is not None:
        if args.threads < 1:
            raise Img2ImgLabError(f"--threads {args.threads}: need at least 1 thread. Fix: e.g. --threads 2.")
        os.environ["IMG2IMG_LAB_THREADS"] = str(args.threads)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``img2img-lab`` console script.

    >>> main(["verify", "runs/demo", "--sample", "0"])
    files: 13 checked, 0 failed
    planned cells missing: 0
    regenerated: 0 cells, 0 differ
    verify: OK
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        quiet_model_libraries()  # the CLI prints its own progress and errors
    context = distributed.context_from_environment()
    prefix = f"rank {context.rank}: " if context.distributed else ""
    try:
        _apply_global_options(args)
        with _quiet_unless_main(context), one_line_warnings(sys.stderr):  # rank 0 alone prints; warnings in one line
            return args.handler(args)
    except Img2ImgLabError as error:
        if args.debug:
            raise
        print(f"{prefix}error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if args.debug:
            raise
        print(f"{prefix}error: {os_error_message(error)}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM): finished cells are saved; rerun the same command to resume.", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; rerun the same command to resume.", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI never prints a traceback unless asked
        if args.debug:
            raise
        print(f"{prefix}error: {args.command} failed: {type(error).__name__}: {one_line(error)} "
              f"(rerun with `img2img-lab --debug {args.command} ...` for the traceback)", file=sys.stderr)
        return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is (a scheduler's or ``kill``'s stop ends like Ctrl-C: one line, exit 143)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _exit_on_signal(signum, frame):
    """A signal after the command's work is done (the interpreter is exiting): one line, no traceback."""
    import signal

    os.write(2, b"interrupted while exiting: the command had finished; everything is saved.\n")
    os._exit(130 if signum == signal.SIGINT else 143)


def run(argv: list[str] | None = None) -> None:
    """The console script (``img2img-lab``, ``python -m img2img_lab``): :func:`main` with SIGTERM ending like Ctrl-C,
    and a Ctrl-C or SIGTERM that lands while the interpreter exits ending in one line instead of a traceback."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = main(argv)
    except KeyboardInterrupt as interruption:  # landed between main's own handlers (at its very end)
        terminated = isinstance(interruption, Terminated)
        print("terminated (SIGTERM)" if terminated else "interrupted", "as the command ended; finished cells are "
              "saved.", file=sys.stderr)
        code = 143 if terminated else 130
    signal.signal(signal.SIGINT, _exit_on_signal)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    sys.exit(code)


if __name__ == "__main__":
    run()
