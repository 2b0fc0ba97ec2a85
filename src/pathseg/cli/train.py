"""``pathseg train``, ``evaluate``, ``predict`` and ``models``: supervised segmentation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from pathseg.cli.common import (
    BatchOption,
    ConfigOption,
    OutOption,
    ResumeOption,
    ScaleOption,
    SeedOption,
    SetOption,
    StepsOption,
    console,
    option_pairs,
    parse_classes,
    parse_loss,
    print_error,
    print_metrics,
    run_config,
)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(evaluate)
    app.command()(predict)
    app.command("models")(list_models_command)


def _train_overrides(
    train: Path | None,
    val: Path | None,
    test: Path | None,
    classes: str | None,
    label_fraction: float | None,
    groups: Path | None,
    model: str | None,
    loss: str | None,
    steps: int | None,
    batch_size: int | None,
    crop_size: int | None,
    scale: float | None,
    seed: int | None,
    output: Path | None,
    instances: str | None = None,
    budget_minutes: float | None = None,
    mpp: float | None = None,
) -> list[str]:
    """Turn the convenience options into ``key=value`` overrides (applied before ``--set``)."""
    pairs = option_pairs(
        [
            ("instances.method", instances),
            ("train.budget_minutes", budget_minutes),
            ("data.mpp", mpp),
            ("data.train", train),
            ("data.val", val),
            ("data.test", test),
            ("data.label_fraction", label_fraction),
            ("data.groups_csv", groups),
            ("model.name", model),
            ("train.steps", steps),
            ("train.batch_size", batch_size),
            ("data.crop_size", crop_size),
            ("data.scale", scale),
            ("train.seed", seed),
            ("output", output),
        ]
    )
    if classes is not None:
        pairs.append("data.classes=" + json.dumps(parse_classes(classes)))
    if loss is not None:
        pairs.append("loss.terms=" + json.dumps(parse_loss(loss)))
    return pairs


def train(
    config: ConfigOption = None,
    train_dir: Annotated[Path | None, typer.Option("--train", help="Folder with images/ and masks/.")] = None,
    val_dir: Annotated[
        Path | None, typer.Option("--val", help="Validation folder (default: split from --train).")
    ] = None,
    test_dir: Annotated[
        Path | None, typer.Option("--test", help="Test folder, evaluated after training.")
    ] = None,
    classes: Annotated[str | None, typer.Option(help='Class map, e.g. "background=0,gland=255".')] = None,
    label_fraction: Annotated[
        float | None, typer.Option(help="Fraction of labelled training images to use.")
    ] = None,
    groups: Annotated[
        Path | None, typer.Option(help="CSV of image -> patient, for patient-wise splits.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Registered model name (see `pathseg models`).")] = None,
    loss: Annotated[str | None, typer.Option(help='Loss terms, e.g. "ce+dice" or "focal:1,dice:1".')] = None,
    steps: StepsOption = None,
    batch_size: BatchOption = None,
    crop_size: Annotated[int | None, typer.Option(help="Training crop and inference tile size.")] = None,
    scale: ScaleOption = None,
    seed: SeedOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
    init: Annotated[
        Path | None,
        typer.Option(help="Start from these weights: a file, a run folder, or a `pathseg pretrain` run."),
    ] = None,
    instances: Annotated[
        str | None,
        typer.Option(
            help="How objects are separated: components, or boundary (boundary-aware target + "
            "watershed: touching glands/nuclei come apart; one object class)."
        ),
    ] = None,
    budget_minutes: Annotated[
        float | None,
        typer.Option(help="Train for this many minutes (LR schedule by time; --steps becomes a cap)."),
    ] = None,
    mpp: Annotated[
        float | None, typer.Option(help="Microns per pixel of the training images (recorded for slides).")
    ] = None,
) -> None:
    """Train a segmenter on an images/ + masks/ folder and evaluate it on whole images."""
    from pathseg.config import SupervisedConfig
    from pathseg.engine.distributed import is_main_process
    from pathseg.methods import supervised
    from pathseg.report.run_report import build_run_report

    pairs = (
        _train_overrides(
            train_dir,
            val_dir,
            test_dir,
            classes,
            label_fraction,
            groups,
            model,
            loss,
            steps,
            batch_size,
            crop_size,
            scale,
            seed,
            output,
            instances,
            budget_minutes,
            mpp,
        )
        + ([f"init={init}"] if init is not None else [])
        + list(overrides or [])
    )
    cfg = run_config(SupervisedConfig, config, output, pairs, resume)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    started = time.perf_counter()
    outcome = supervised.train(cfg, resume=resume)
    outcome["wall_s"] = time.perf_counter() - started
    if is_main_process():
        report = build_run_report(Path(cfg.output), monitor=cfg.train.monitor)
        if "test" in outcome:
            print_metrics(outcome["test"], "test metrics")
        console.print(f"report: {report}")


def evaluate(
    run: Annotated[Path, typer.Argument(help="A finished run folder (holds model.safetensors).")],
    data: Annotated[Path, typer.Option(help="Folder with images/ and masks/ to evaluate on.")],
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write results.")] = None,
    overlap: Annotated[float | None, typer.Option(help="Sliding-window overlap (0-1).")] = None,
    object_metrics: Annotated[bool, typer.Option(help="GlaS object F1/Dice/Hausdorff.")] = True,
    max_overlays: Annotated[int, typer.Option(help="How many overlay panels to save.")] = 16,
) -> None:
    """Score a trained model on whole images: metrics table, per-image CSV, overlay PNGs."""
    from pathseg.data.folders import check_samples, discover_dataset
    from pathseg.inference.evaluate import evaluate_samples
    from pathseg.methods.supervised import instance_settings, load_run, window_settings

    model, cfg, class_map = load_run(run)
    samples = discover_dataset(data, mask_suffix=cfg.data.mask_suffix)
    check_samples(samples, class_map)
    window = window_settings(cfg)
    if overlap is not None:
        window.overlap = overlap
    out = output or run / f"eval_{data.name}"
    evaluator = evaluate_samples(
        model,
        samples,
        class_map,
        window,
        cfg.data.scale,
        object_metrics,
        out_dir=out,
        max_overlays=max_overlays,
        instances=instance_settings(cfg),
    )
    print_metrics(evaluator.summary(), f"{data} ({len(samples)} images)")
    console.print(f"results: {out}/metrics.json, {out}/per_image.csv, {out}/overlays/")


def predict(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    images: Annotated[Path, typer.Argument(help="Folder of images to segment.")],
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (masks/, instances/ and overlays/).")
    ],
    overlays: Annotated[bool, typer.Option(help="Also save overlay PNGs.")] = True,
) -> None:
    """Segment a folder of images: palette PNG class masks, 16-bit instance maps, overlays.

    An image that cannot be read is named and skipped; the others are still written (exit status 2
    when any was skipped).
    """
    from pathseg.data.folders import find_images
    from pathseg.inference.evaluate import predict_paths
    from pathseg.methods.supervised import instance_settings, load_run, window_settings

    model, cfg, class_map = load_run(run)
    paths = find_images(images)
    written, failures = predict_paths(
        model,
        paths,
        class_map,
        window_settings(cfg),
        output,
        cfg.data.scale,
        overlays,
        instances=instance_settings(cfg),
    )
    classes = ", ".join(f"{i}={name}" for i, name in enumerate(class_map.names))
    console.print(
        f"wrote {len(written)} masks to {output / 'masks'} (pixel values: {classes}) "
        f"and instance maps to {output / 'instances'}"
    )
    if failures:
        for failure in failures:
            print_error(failure)
        raise typer.Exit(2)


def list_models_command() -> None:
    """List the registered networks."""
    from pathseg.models import list_models

    for name in list_models():
        console.print(name)
