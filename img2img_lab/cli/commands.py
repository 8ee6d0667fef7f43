"""What each ``img2img-lab`` command does once its arguments are parsed: one ``cmd_<name>(args)`` per command,
returning the exit status (:mod:`img2img_lab.cli.main` builds the parser and turns errors into one line).

>>> import argparse
>>> cmd_export(argparse.Namespace(run_dir="runs/demo", csv="table.csv", parquet=None))
wrote table.csv
0
"""

from __future__ import annotations

import argparse
import json
import time

from img2img_lab.sweep import distributed
from img2img_lab.cli.support import axis_overrides, config_path, number_list, parse_where
from img2img_lab.errors import Img2ImgLabError


def cmd_sweep(args: argparse.Namespace) -> int:
    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.run import run_sweep

    plan = _with_model(SweepPlan.from_yaml(config_path(args.config)), args.model)
    overrides = axis_overrides(args)
    if overrides:
        plan = SweepPlan.from_dict({**plan.to_dict(), **overrides})
    print(f"plan: {plan.summary()}")
    started = time.perf_counter()
    memory = {name: getattr(args, name) for name in ("offload", "vae_tiling", "vae_slicing", "attention_slicing",
                                                     "memory_budget") if getattr(args, name) is not None}
    table = run_sweep(plan, args.out, device=args.device, dtype=args.dtype, progress=not args.no_progress,
                      metrics=args.metrics, engine=args.engine, max_batch_size=args.max_batch, cache=args.cache,
                      memory=memory)
    elapsed = time.perf_counter() - started
    from img2img_lab.store.run_store import RunStore

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


def cmd_measure(args: argparse.Namespace) -> int:
    from img2img_lab.metrics.measure import measure_run
    from img2img_lab.metrics.registry import DEFAULT_METRICS

    names = args.metrics or ",".join(DEFAULT_METRICS)
    started = time.perf_counter()
    report = measure_run(args.run_dir, names, device=args.device, progress=not args.no_progress, masks=args.masks)
    computed = ", ".join(f"{name} {count}" for name, count in report["computed"].items()) or "nothing missing"
    print(f"measured {args.run_dir} in {time.perf_counter() - started:.1f} s: {computed}")
    for explanation in report["unavailable"].values():
        print(f"unavailable: {explanation}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from img2img_lab.figures.grids import comparison_grid, save_png
    from img2img_lab.metrics.registry import check_metric_names

    annotate = [name.strip() for name in (args.annotate or "").split(",") if name.strip()]
    check_metric_names(annotate + ([args.border] if args.border else []))
    grid = comparison_grid(args.run_dir, rows=args.rows, cols=args.cols, annotate=annotate, border=args.border,
                           where=parse_where(args.where), scale=args.scale, title=True)
    save_png(grid, args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height} px)")
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from img2img_lab.figures.grids import strength_curves
    from img2img_lab.store.run_store import atomic_write

    figure = strength_curves(args.run_dir, args.metric, x=args.x, hue=args.hue or None,
                             where=parse_where(args.where))
    atomic_write(args.out, lambda stream: figure.savefig(stream, format="png"))
    print(f"wrote {args.out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from img2img_lab.models.info import describe_model

    info = describe_model(args.model, device=args.device, dtype=args.dtype, reload=args.reload)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model:             {info['model']}")
    print(f"pipeline:          {info['pipeline_class']}")
    print(f"family:            {info['family']} ({info['family_label']})")
    print(f"scheduler:         {info['scheduler']}")
    print(f"size multiple:     {info['size_multiple']} px")
    print(f"native resolution: {info['native_resolution']} px")
    print(f"guidance:          {info['recommended_guidance']:g} recommended (pipeline default {info['default_guidance']})")
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


def _strength_settings(args: argparse.Namespace) -> dict:
    """The tools' schedule options given on the command line (the others keep each tool's default)."""
    given = {"a1111": {"sampler": args.a1111_sampler, "schedule": args.a1111_schedule},
             "comfyui": {"scheduler": args.comfyui_scheduler}, "invokeai": {"scheduler": args.invokeai_scheduler}}
    return {tool: {key: value for key, value in values.items() if value is not None} for tool, values in given.items()}


def cmd_strength(args: argparse.Namespace) -> int:
    """``img2img-lab strength``: the table of one strength under every tool, a translation, or the map figure; each
    tool on its schedule (its default unless given), named beside its figures."""
    from img2img_lab.errors import PlanError
    from img2img_lab.strength.mapping import ALL_TOOLS, strength_map, strength_map_figure, tool_settings, translate

    if args.steps < 1:
        raise PlanError(f"--steps {args.steps} must be at least 1.")
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise PlanError(f"--strength {args.strength:g} must be in [0, 1].")
    if (args.source is None) != (args.target is None) or (args.source and args.strength is None):
        raise PlanError("--from and --to go together, with --strength. Fix: e.g. --strength 0.6 --from comfyui --to "
                        "diffusers.")
    for tool in (args.source, args.target):
        if tool is not None and tool not in ALL_TOOLS:
            raise PlanError(f"unknown tool {tool!r}. Fix: use one of {', '.join(ALL_TOOLS)}.")
    settings = tool_settings(_strength_settings(args))
    common = {"steps": args.steps, "size": args.size, "settings": settings}
    if args.source:
        answer = translate(args.model, strength=args.strength, source=args.source, target=args.target, **common)
        print(f"{args.source} {args.strength:g} ({answer['source_executed_steps']} steps, start log-SNR "
              f"{answer['source_log_snr']:.3f}, {answer['source_schedule']}) = {args.target} {answer['strength']:g} "
              f"({answer['executed_steps']} steps, start log-SNR {answer['log_snr']:.3f}, {answer['schedule']}) on "
              f"{args.model} at {args.steps} steps")
        if answer["caveat"]:
            print(f"note: {answer['caveat']}.")
    elif args.strength is not None:
        table = strength_map(args.model, strengths=[args.strength], **common)
        print(f"strength {args.strength:g}, {args.steps} steps, {args.model}:")
        print(table[["tool", "schedule", "executed_steps", "start_sigma", "log_snr"]].to_string(
            index=False, float_format="{:.4f}".format))
        for tool, note in zip(table.tool, table.note):
            if note:
                print(f"note ({tool}): {note}.")
    else:  # the map: executed steps / start log-SNR of each tool at strengths 0.1 ... 1.0
        table = strength_map(args.model, strengths=[k / 10 for k in range(1, 11)], **common)
        table["run"] = [f"{steps} / {snr:.2f}" for steps, snr in zip(table.executed_steps, table.log_snr)]
        print(f"executed steps / start log-SNR, {args.steps} steps, {args.model}:")
        print(table.pivot(index="strength", columns="tool", values="run")[list(dict.fromkeys(table.tool))].to_string())
        print("schedules: " + "; ".join(f"{tool} {schedule}" for tool, schedule in
                                        dict(zip(table.tool, table.schedule)).items()))
    if args.plot:
        figure = strength_map_figure([args.model], **common)
        figure.savefig(args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from img2img_lab.cli.demo import main as demo_main

    strengths = number_list("--strengths", args.strengths, float) if args.strengths is not None else None
    seeds = None
    if args.seeds is not None:
        count = number_list("--seeds", args.seeds, int)
        if len(count) != 1 or count[0] < 1:
            raise Img2ImgLabError(f"--seeds {args.seeds}: the number of seeds must be one whole number >= 1. "
                                  f"Fix: e.g. --seeds 2.")
        seeds = list(range(count[0]))
    return demo_main(args.out, seeds=seeds, strengths=strengths, progress=not args.no_progress)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from img2img_lab.calibration.procedure import CalibrationSettings, calibrate, load_config
    from img2img_lab.images.intake import check_image_files
    from img2img_lab.models.loading import load_model, resolve_model

    plan, settings = load_config(config_path(args.config))
    plan = _with_model(plan, args.model)
    overrides = {key: value for key, value in (("refine_rounds", args.rounds), ("rule", args.rule),
                                                ("n_resamples", args.bootstrap)) if value is not None}
    if overrides:
        settings = CalibrationSettings(**{**settings.__dict__, **overrides})
    out = args.out or f"runs/{plan.name}"
    check_image_files(plan.images)  # before any model loads
    print(f"calibrating: {plan.summary()} (coarse grid; refined where a crossing lies)")
    started = time.perf_counter()
    if plan.models:
        return _calibrate_models(plan, settings, out, args, started)
    from img2img_lab.calibration.modes import mode_plans

    if len(mode_plans(plan)) > 1:  # several modes, or several inpainting settings: the mode table
        return _calibrate_modes(plan, settings, out, args, started)
    context = distributed.current()
    device = distributed.rank_device(context, args.device)
    model = distributed.load_model(context, lambda: load_model(plan.model, device=device, dtype=args.dtype),
                                   local=resolve_model(plan.model)[1] is not None)
    result = calibrate((plan, settings), out, pipe=model, progress=not args.no_progress and context.is_main)
    print()
    print(result.to_markdown())
    counts = result.counts
    print(f"wrote {out}/calibration/ (reference_table.csv, calibration.md/.html/.json, curves.png, heatmap.png): "
          f"{counts['coarse_cells']} coarse + {counts['refinement_cells']} refinement cells in "
          f"{counts['refinement_rounds']} rounds, {time.perf_counter() - started:.1f} s")
    return 0


def _calibrate_modes(plan, settings, out: str, args: argparse.Namespace, started: float) -> int:
    from img2img_lab.calibration.modes import calibrate_modes
    from img2img_lab.models.loading import load_model

    model = load_model(plan.model, device=args.device, dtype=args.dtype)
    modes = calibrate_modes((plan, settings), out, pipe=model, progress=not args.no_progress)
    print("\n# Mode reference table\n")
    print(modes.to_markdown())
    if modes.validation is not None and len(modes.validation):
        print(modes.validation[["mode", "goal", "strength", "held_out_mean", "ci_low", "ci_high", "runs",
                                "holds"]].to_string(index=False, float_format=lambda value: f"{value:.2f}"))
    print(f"wrote {out}/calibration/: {', '.join(f'{mode}/' for mode in modes.results)} modes.csv, modes.md in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


def _calibrate_models(plan, settings, out: str, args: argparse.Namespace, started: float) -> int:
    from img2img_lab.calibration.compare import calibrate_models, model_folder_name, model_summary

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


def cmd_verify(args: argparse.Namespace) -> int:
    from img2img_lab.sweep.verify import main as verify_main

    return verify_main(args.run_dir, sample=args.sample, seed=args.seed, device=args.device, repair=args.repair,
                       yes=args.yes)


def cmd_report(args: argparse.Namespace) -> int:
    from img2img_lab.figures.report import write_report

    path = write_report(args.run_dir, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from img2img_lab.figures.report import export_table

    to = getattr(args, "to", None)  # a Namespace built by hand (the API, the doctest) may not carry the new options
    if args.csv is not None or args.parquet is not None or to is None:
        for path in export_table(args.run_dir, csv=args.csv, parquet=args.parquet):
            print(f"wrote {path}")
    if to is not None:
        from img2img_lab.figures.export import export_run

        if len(to) > 2:
            raise Img2ImgLabError(f"--to takes a target and at most one folder, not {len(to)} values. Fix: "
                                  f"e.g. --to hf-dataset exported/study.")
        target, folder = to[0], (to[1] if len(to) > 1 else None)
        where = export_run(args.run_dir, target, to=folder, tracking_uri=getattr(args, "tracking_uri", None),
                           project=getattr(args, "project", "img2img-lab"))
        said = {"hf-dataset": f"a Hugging Face dataset at {where} (datasets.load_dataset({where!r}))",
                "mlflow": f"MLflow run {where} in experiment 'img2img-lab'",
                "wandb": f"a W&B run at {where} (upload it with `wandb sync {where}` unless it ran online)"}[target]
        print(f"exported {args.run_dir} to {said}")
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    from img2img_lab.resources import copy_notebooks

    copied = copy_notebooks(args.folder, overwrite=args.force)
    print(f"copied {len(copied)} notebooks into {args.folder}: {', '.join(path.name for path in copied)}")
    print(f"open them with: jupyter lab {args.folder}   (JupyterLab: pip install 'img2img-lab[lab]')")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from img2img_lab.metrics.weight_files import fetch, weights_table

    if args.action == "fetch":
        for name, path in fetch(args.names or ["lpips"], to=args.to):
            print(f"{name}: {path}")
        if args.to:
            print(f"on every machine that uses them: export IMG2IMG_LAB_WEIGHTS_DIR={args.to} TORCH_HOME={args.to} "
                  f"HF_HOME={args.to}/huggingface")
        return 0
    for row in weights_table(to=args.to):
        if not args.names or row["name"] in args.names:
            state = "present" if row["present"] else f"missing (~{row['approx_mb']:g} MB)"
            print(f"{row['name']:<14} {state:<20} {row['serves']}: {row['path']}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from img2img_lab.cli.doctor import doctor_report, format_doctor

    if args.fit is not None:
        from img2img_lab.models.fit import fit_report, format_fit

        report = fit_report(args.fit)
        print(json.dumps(report, indent=2, default=str) if args.json else format_fit(report))
        return 0
    report = doctor_report(run_dir=args.run_dir)
    print(json.dumps(report, indent=2, default=str) if args.json else format_doctor(report))
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    from img2img_lab.sweep.distributed import consolidate

    rows, before = consolidate(args.run_dir)
    print(f"consolidated {args.run_dir}: results.parquet holds {rows} rows ({rows - before} from row files not in it "
          f"before); `img2img-lab verify {args.run_dir}` checks them, a rerun of the sweep completes the rest")
    return 0
