"""The ``img2img-lab`` command line.

::

    img2img-lab [--debug] COMMAND ...
    img2img-lab sweep CONFIG.yaml --out RUN_DIR [--model M] [--metrics ssim,...] [--engine batched|per-cell]
                     [--max-batch N] [--cache DIR] [--device cpu|cuda] [--dtype ...]
    img2img-lab demo [--out runs/demo]
    img2img-lab info [MODEL] [--json]
    img2img-lab measure RUN_DIR [--metrics ssim,psnr,...]
    img2img-lab grid RUN_DIR [--rows seed] [--cols strength] [--annotate ssim,lpips] [--border ssim]
                     [--where prompt="a cat"] --out grid.png
    img2img-lab curves RUN_DIR --metric ssim [--x strength|executed_steps|sqrt_alpha_bar|sigma|log_snr]
                     [--hue prompt]
                     --out curves.png
    img2img-lab calibrate CONFIG.yaml [--out RUN_DIR] [--model M] [--rounds N] [--rule confident|mean]
                     [--bootstrap B]
    img2img-lab verify RUN_DIR [--sample 8] [--seed 0] [--repair]
    img2img-lab report RUN_DIR [--out report.html]
    img2img-lab export RUN_DIR [--csv table.csv] [--parquet table.parquet]

Errors in the user's input print one line ``error: ...`` (with the fix) and exit with status 2; so do operating
system errors (disk full, permission denied, not a directory: the path and the fix), and any unexpected failure
(its type and message, and a pointer to ``--debug``, which shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from img2img_lab.errors import Img2ImgLabError


def _cmd_sweep(args: argparse.Namespace) -> int:
    from img2img_lab.plan import SweepPlan
    from img2img_lab.sweep import run_sweep

    plan = _with_model(SweepPlan.from_yaml(args.config), args.model)
    print(f"plan: {plan.summary()}")
    started = time.perf_counter()
    table = run_sweep(plan, args.out, device=args.device, dtype=args.dtype, progress=not args.no_progress,
                      metrics=args.metrics, engine=args.engine, max_batch_size=args.max_batch, cache=args.cache)
    elapsed = time.perf_counter() - started
    from img2img_lab.store import RunStore

    counts = RunStore.open(args.out).read_manifest().get("counts", {})
    parts = [f"{counts.get('generated', 0)} generated", f"{counts.get('reused', 0)} duplicate strengths reused",
             f"{counts.get('already_done', 0)} already done"]
    parts += [f"{counts[name]} {what}" for name, what in (("from_cache", "copied from the cache"),
                                                          ("stored_by_another_writer", "stored by another writer"))
              if counts.get(name)]
    print(f"wrote {args.out}: {len(table)} cells ({', '.join(parts)}) in {elapsed:.1f} s")
    flagged = int(table["zero_step"].sum())
    if flagged:
        print(f"note: {flagged} zero-step cells (no timestep left to run) hold the VAE round trip of the source.")
    duplicates = int(table["duplicate_of"].notna().sum())
    if duplicates:
        print(f"note: {duplicates} cells run the same steps as a lower strength (column duplicate_of).")
    return 0


def _with_model(plan, model: str | None):
    """The plan with ``--model`` applied (a config comparing ``models`` cannot take one)."""
    if model is None:
        return plan
    if plan.models:
        raise Img2ImgLabError(f"--model {model} overrides one model, but the config compares models {plan.models}. "
                              f"Fix: drop --model, or edit the config's models list.")
    plan.model = model
    return plan


def _parse_where(items) -> dict:
    where = {}
    for item in items or []:
        if "=" not in item:
            raise Img2ImgLabError(f"--where {item!r} must look like column=value, e.g. --where seed=0.")
        column, value = item.split("=", 1)
        where[column.strip()] = value
    return where


def _cmd_measure(args: argparse.Namespace) -> int:
    from img2img_lab.metrics import DEFAULT_METRICS, measure_run

    names = args.metrics or ",".join(DEFAULT_METRICS)
    started = time.perf_counter()
    report = measure_run(args.run_dir, names, device=args.device, progress=not args.no_progress)
    computed = ", ".join(f"{name} {count}" for name, count in report["computed"].items()) or "nothing missing"
    print(f"measured {args.run_dir} in {time.perf_counter() - started:.1f} s: {computed}")
    for explanation in report["unavailable"].values():
        print(f"unavailable: {explanation}")
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from img2img_lab.grids import comparison_grid, save_png
    from img2img_lab.metrics import check_metric_names

    annotate = [name.strip() for name in (args.annotate or "").split(",") if name.strip()]
    check_metric_names(annotate + ([args.border] if args.border else []))
    grid = comparison_grid(args.run_dir, rows=args.rows, cols=args.cols, annotate=annotate, border=args.border,
                           where=_parse_where(args.where), scale=args.scale)
    save_png(grid, args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height} px)")
    return 0


def _cmd_curves(args: argparse.Namespace) -> int:
    from img2img_lab.grids import strength_curves
    from img2img_lab.store import atomic_write

    figure = strength_curves(args.run_dir, args.metric, x=args.x, hue=args.hue or None,
                             where=_parse_where(args.where))
    atomic_write(args.out, lambda stream: figure.savefig(stream, format="png"))
    print(f"wrote {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from img2img_lab.pipelines import describe_pipeline, load_pipeline, recommended_guidance

    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    info = describe_pipeline(pipe)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model:             {info['model']}")
    print(f"pipeline:          {info['pipeline_class']}")
    print(f"family:            {info['family']} ({info['family_label']})")
    print(f"scheduler:         {info['scheduler']}")
    print(f"size multiple:     {info['size_multiple']} px")
    print(f"native resolution: {info['native_resolution']} px")
    print(f"guidance:          {recommended_guidance(pipe):g} recommended (pipeline default {info['default_guidance']})")
    for argument, why in info["ignored_arguments"].items():
        print(f"ignores:           {argument} ({why})")
    print(f"device / dtype:    {info['device']} / {info['dtype']}")
    print(f"size:              {info['megabytes']} MB")
    print(f"fingerprint:       {info['fingerprint'][:16]}")
    print("components:")
    for name, entry in info["components"].items():
        extra = f"  {entry['parameters']:,} parameters, {entry['megabytes']} MB" if "parameters" in entry else ""
        print(f"  {name:<15} {entry['class']}{extra}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from img2img_lab.demo import main as demo_main

    strengths = [float(value) for value in args.strengths.split(",")] if args.strengths else None
    seeds = list(range(args.seeds)) if args.seeds else None
    return demo_main(args.out, seeds=seeds, strengths=strengths, progress=not args.no_progress)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from img2img_lab.calibrate import CalibrationSettings, calibrate, load_config
    from img2img_lab.pipelines import load_pipeline

    plan, settings = load_config(args.config)
    plan = _with_model(plan, args.model)
    overrides = {key: value for key, value in (("refine_rounds", args.rounds), ("rule", args.rule),
                                                ("n_resamples", args.bootstrap)) if value is not None}
    if overrides:
        settings = CalibrationSettings(**{**settings.__dict__, **overrides})
    out = args.out or f"runs/{plan.name}"
    print(f"calibrating: {plan.summary()} (coarse grid; refined where a crossing lies)")
    started = time.perf_counter()
    if plan.models:
        return _calibrate_models(plan, settings, out, args, started)
    pipe = load_pipeline(plan.model, device=args.device, dtype=args.dtype)
    result = calibrate((plan, settings), out, pipe=pipe, progress=not args.no_progress)
    print()
    print(result.to_markdown())
    counts = result.counts
    print(f"wrote {out}/calibration/ (reference_table.csv, calibration.md/.html/.json, curves.png, heatmap.png): "
          f"{counts['coarse_cells']} coarse + {counts['refinement_cells']} refinement cells in "
          f"{counts['refinement_rounds']} rounds, {time.perf_counter() - started:.1f} s")
    return 0


def _calibrate_models(plan, settings, out: str, args: argparse.Namespace, started: float) -> int:
    from img2img_lab.compare import calibrate_models, model_folder_name, model_summary

    results = calibrate_models((plan, settings), out, device=args.device, dtype=args.dtype,
                               progress=not args.no_progress)
    for label, result in results.items():
        print(f"\n## {label}\n")
        print(result.to_markdown())
    summary = model_summary(results)
    metric = next(iter(results.values())).primary_fidelity_metric
    if metric is not None:
        columns = ["model", "guidance_scale", "strength", "executed_steps", "log_snr", metric]
        print(f"\n## {metric} by model (log-SNR: the start latent's noise, comparable across families)\n")
        print(summary[columns].to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    folders = ", ".join(f"{model_folder_name(label)}/" for label in results)
    print(f"wrote {out}/calibration/: {folders} models.csv, models.png in {time.perf_counter() - started:.1f} s")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from img2img_lab.verify import main as verify_main

    return verify_main(args.run_dir, sample=args.sample, seed=args.seed, device=args.device, repair=args.repair)


def _cmd_report(args: argparse.Namespace) -> int:
    from img2img_lab.report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from img2img_lab.report import export_table

    for path in export_table(args.run_dir, csv=args.csv, parquet=args.parquet):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img2img-lab",
        description="Measure what the img2img strength dial does for your model, image and prompt.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_model_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
        sub.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: fp16 on GPU)")

    sweep = commands.add_parser("sweep", help="run a strength sweep from a YAML config into a run folder")
    sweep.add_argument("config", help="YAML sweep config (see data/configs/)")
    sweep.add_argument("--out", required=True, help="run folder to write (rerun to resume or extend)")
    sweep.add_argument("--model", default=None, help="override the config's model (hub id or folder)")
    sweep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sweep.add_argument("--metrics", default="", help="measure as the sweep goes, e.g. ssim,psnr,delta_e")
    sweep.add_argument("--engine", default="batched", choices=["batched", "per-cell"],
                       help="batched (default; within 1/255 of per-cell, faster) or the per-cell reference")
    sweep.add_argument("--max-batch", type=int, default=None, help="UNet samples per call (default by device)")
    sweep.add_argument("--cache", default=None, help="shared cache folder: reuse cells any run put there, add new ones")
    add_model_options(sweep)
    sweep.set_defaults(handler=_cmd_sweep)

    demo = commands.add_parser("demo", help="offline demo on the embedded model: sweep, measure, grids, curves")
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the config's 3)")
    demo.add_argument("--strengths", default=None, help="comma-separated strengths (default: the config's 8)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(handler=_cmd_demo)

    info = commands.add_parser("info", help="describe a model: components, size, scheduler, size rules")
    info.add_argument("model", nargs="?", default=None, help="hub id or diffusers folder (default: embedded model)")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(info)
    info.set_defaults(handler=_cmd_info)

    measure = commands.add_parser("measure", help="add metric columns to a run folder (only missing values)")
    measure.add_argument("run_dir")
    measure.add_argument("--metrics", default=None, help="comma-separated (default: ssim,ms_ssim,psnr,delta_e,edge_f1,lpips)")
    measure.add_argument("--device", default=None, help="device for LPIPS / CLIP (default cpu)")
    measure.add_argument("--no-progress", action="store_true")
    measure.set_defaults(handler=_cmd_measure)

    grid = commands.add_parser("grid", help="draw a labelled comparison grid PNG from a run folder")
    grid.add_argument("run_dir")
    grid.add_argument("--rows", default="seed", help="table column for rows (default seed)")
    grid.add_argument("--cols", default="strength", help="table column for columns (default strength)")
    grid.add_argument("--annotate", default="", help="comma-separated metrics printed under each image")
    grid.add_argument("--border", default=None, help="metric that colours each image's border")
    grid.add_argument("--where", action="append", help="pin an axis: column=value (repeatable)")
    grid.add_argument("--scale", type=int, default=None, help="integer upscaling of each image")
    grid.add_argument("--out", required=True)
    grid.set_defaults(handler=_cmd_grid)

    curves = commands.add_parser("curves", help="plot a metric against strength (mean and spread over seeds)")
    curves.add_argument("run_dir")
    curves.add_argument("--metric", required=True)
    curves.add_argument("--x", default="strength", help="strength, executed_steps, sqrt_alpha_bar, sigma or log_snr (any family)")
    curves.add_argument("--hue", default="prompt", help="one line per value of this column ('' for none)")
    curves.add_argument("--where", action="append", help="pin an axis: column=value (repeatable)")
    curves.add_argument("--out", required=True)
    curves.set_defaults(handler=_cmd_curves)

    calibrate = commands.add_parser("calibrate", help="measure the strength reference table and recommend strengths")
    calibrate.add_argument("config", help="YAML calibration config (see data/configs/calibrate.yaml)")
    calibrate.add_argument("--out", default=None, help="run folder (default runs/<config name>); a cache")
    calibrate.add_argument("--model", default=None, help="override the config's model (hub id or folder)")
    calibrate.add_argument("--rounds", type=int, default=None, help="refinement rounds (default: the config's)")
    calibrate.add_argument("--rule", default=None, choices=["confident", "mean"], help="decide on the CI or the mean")
    calibrate.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 2000)")
    calibrate.add_argument("--no-progress", action="store_true")
    add_model_options(calibrate)
    calibrate.set_defaults(handler=_cmd_calibrate)

    verify = commands.add_parser("verify", help="check a run folder's files and regenerate a sample of cells")
    verify.add_argument("run_dir")
    verify.add_argument("--sample", type=int, default=8, help="cells to regenerate (0: check files only)")
    verify.add_argument("--seed", type=int, default=0, help="which cells are sampled")
    verify.add_argument("--device", default=None, help="default: the device the run used")
    verify.add_argument("--repair", action="store_true",
                        help="first regenerate or re-adopt what is missing or damaged (says what it cannot)")
    verify.set_defaults(handler=_cmd_verify)

    report = commands.add_parser("report", help="write one self-contained HTML report of a run folder")
    report.add_argument("run_dir")
    report.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    report.set_defaults(handler=_cmd_report)

    export = commands.add_parser("export", help="write the tidy table as CSV and/or Parquet")
    export.add_argument("run_dir")
    export.add_argument("--csv", default=None)
    export.add_argument("--parquet", default=None)
    export.set_defaults(handler=_cmd_export)
    return parser


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
        _quiet_libraries()
    try:
        return args.handler(args)
    except Img2ImgLabError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if args.debug:
            raise
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; rerun the same command to resume.", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI never prints a traceback unless asked
        if args.debug:
            raise
        print(f"error: {args.command} failed: {type(error).__name__}: {_one_line(error)} "
              f"(rerun with `img2img-lab --debug {args.command} ...` for the traceback)", file=sys.stderr)
        return 2


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
    return f"{where}{error.strerror or _one_line(error)}. Fix: {fix}."


def _quiet_libraries() -> None:
    """Hide diffusers' and transformers' loading bars and advice; the CLI prints its own progress and errors."""
    import importlib

    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            logging = importlib.import_module(name)
        except ImportError:
            continue
        logging.disable_progress_bar()
        logging.set_verbosity_error()


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened to ``limit`` characters."""
    text = " ".join(str(error).split()) or "no message"
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
