"""The ``img2img-lab`` command line.

::

    img2img-lab sweep CONFIG.yaml --out RUN_DIR [--model M] [--device cpu|cuda] [--dtype float32|float16]
    img2img-lab info [MODEL] [--json]

Errors in the user's input print one line ``error: ...`` (with the fix) and exit with status 2.
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

    plan = SweepPlan.from_yaml(args.config)
    if args.model is not None:
        plan.model = args.model
    print(f"plan: {plan.summary()}")
    started = time.perf_counter()
    table = run_sweep(plan, args.out, device=args.device, dtype=args.dtype, progress=not args.no_progress)
    elapsed = time.perf_counter() - started
    from img2img_lab.store import RunStore

    counts = RunStore.open(args.out).read_manifest().get("counts", {})
    print(
        f"wrote {args.out}: {len(table)} cells ({counts.get('generated', 0)} generated, "
        f"{counts.get('reused', 0)} duplicate strengths reused, {counts.get('already_done', 0)} already done) "
        f"in {elapsed:.1f} s"
    )
    flagged = int(table["zero_step"].sum())
    if flagged:
        print(f"note: {flagged} zero-step cells (int(steps*strength) == 0) hold the VAE round trip of the source.")
    duplicates = int(table["duplicate_of"].notna().sum())
    if duplicates:
        print(f"note: {duplicates} cells run the same steps as a lower strength (column duplicate_of).")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from img2img_lab.pipelines import describe_pipeline, load_pipeline

    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    info = describe_pipeline(pipe)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model:             {info['model']}")
    print(f"pipeline:          {info['pipeline_class']}")
    print(f"scheduler:         {info['scheduler']}")
    print(f"size multiple:     {info['size_multiple']} px")
    print(f"native resolution: {info['native_resolution']} px")
    print(f"device / dtype:    {info['device']} / {info['dtype']}")
    print(f"size:              {info['megabytes']} MB")
    print(f"fingerprint:       {info['fingerprint'][:16]}")
    print("components:")
    for name, entry in info["components"].items():
        extra = f"  {entry['parameters']:,} parameters, {entry['megabytes']} MB" if "parameters" in entry else ""
        print(f"  {name:<15} {entry['class']}{extra}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img2img-lab",
        description="Measure what the img2img strength dial does for your model, image and prompt.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_model_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
        sub.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: fp16 on GPU)")

    sweep = commands.add_parser("sweep", help="run a strength sweep from a YAML config into a run folder")
    sweep.add_argument("config", help="YAML sweep config (see data/configs/)")
    sweep.add_argument("--out", required=True, help="run folder to write (rerun to resume or extend)")
    sweep.add_argument("--model", default=None, help="override the config's model (hub id or folder)")
    sweep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_options(sweep)
    sweep.set_defaults(handler=_cmd_sweep)

    info = commands.add_parser("info", help="describe a model: components, size, scheduler, size rules")
    info.add_argument("model", nargs="?", default=None, help="hub id or diffusers folder (default: embedded model)")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(info)
    info.set_defaults(handler=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``img2img-lab`` console script.

    >>> main(["info", "--help"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Img2ImgLabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
