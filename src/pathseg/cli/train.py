"""``pathseg train``, ``evaluate``, ``predict`` and ``models``: supervised segmentation."""

from __future__ import annotations

import contextlib
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
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Slides (svs, ndpi, mrxs, ome.tif, any image file), or folders of image tiles "
            "(and/or slides)."
        ),
    ],
    output: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    overlays: Annotated[bool, typer.Option(help="Also save overlay PNGs (tiles).")] = True,
    mpp: Annotated[
        float | None, typer.Option(help="µm per pixel of the slides (level 0), for slides that record none.")
    ] = None,
    model_mpp: Annotated[
        float | None,
        typer.Option(help="µm per pixel the model works at, for a run trained without --mpp."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue interrupted slide predictions; skip finished slides.")
    ] = False,
    backend: Annotated[
        str | None, typer.Option(help="Slide reader: openslide, tiffslide or image (default: by file).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Slide tiles per batch.")] = 8,
    workers: Annotated[int, typer.Option(help="DataLoader processes reading slide tiles.")] = 2,
    tissue: Annotated[
        bool, typer.Option(help="Predict slides on detected tissue only (--no-tissue: everywhere).")
    ] = True,
    precision: Annotated[
        str, typer.Option(help="Slides: auto (bf16 where native: GPUs, AVX512-BF16/AMX CPUs), bf16 or fp32.")
    ] = "auto",
) -> None:
    """Segment slides and folders of image tiles.

    A slide gives <stem>.ome.tif (pyramidal label mask with the class names), <stem>.geojson
    (QuPath), <stem>.csv (area per class) and <stem>.thumbnail.png, predicted at the µm/px the model
    was trained at, in bounded memory. A folder of tiles gives masks/ (palette PNG class indices),
    instances/ (16-bit) and overlays/. An unreadable image or slide is named and skipped; the others
    are still written (exit status 2 when any was skipped).
    """
    from pathseg.inference.evaluate import predict_paths
    from pathseg.methods.supervised import instance_settings, load_run, window_settings

    model, cfg, class_map = load_run(run)
    slides, tiles = split_slides(inputs)
    failures = []
    if tiles:
        written, failures = predict_paths(
            model,
            tiles,
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
    if slides:
        from pathseg.slides.predict import SlideSettings
        from pathseg.slides.tissue import TissueSettings

        network = _slide_model(run, model, cfg, class_map, model_mpp)
        settings = SlideSettings(
            batch_size, workers, TissueSettings() if tissue else None, precision=precision
        )
        failures += _predict_slides(run, network, settings, slides, output, mpp, resume, backend)
    if failures:
        for failure in failures:
            print_error(failure)
        raise typer.Exit(2)


def _slide_model(run: Path, model, cfg, class_map, model_mpp: float | None):
    """The network of a run with what slide prediction needs: classes, µm/px, tile, overlap."""
    from pathseg.errors import ConfigError
    from pathseg.slides.predict import SlideModel

    working_mpp = model_mpp or (cfg.data.mpp / cfg.data.scale if cfg.data.mpp else None)
    if working_mpp is None:
        raise ConfigError(
            f"{run}: the run records no µm per pixel (trained without --mpp); pass --model-mpp "
            "(the resolution the model should see, e.g. the training images' µm/px divided by the scale)"
        )
    return SlideModel(
        model,
        class_map.names,
        class_map.palette(),
        working_mpp,
        cfg.data.crop_size,
        cfg.eval.overlap,
        cfg.instances.method,
    )


def _predict_slides(run, network, settings, slides, output, mpp, resume, backend) -> list:
    """Predict each slide; returns the errors of those that failed (the others are written)."""
    from pathseg.errors import DataError
    from pathseg.inference.evaluate import output_folder
    from pathseg.slides.predict import output_paths, predict_slide, slide_stem
    from pathseg.slides.reader import open_slide

    output_folder(output)
    failures = []
    for path in slides:
        if resume and all(
            p.exists()
            for k, p in output_paths(output, slide_stem(path)).items()
            if k in ("mask", "geojson", "csv")
        ):
            console.print(f"{path.name}: already predicted, skipped")
            continue
        try:
            slide = open_slide(path, backend)
            if slide.mpp is None and mpp is not None:  # --mpp fills in what the slide does not say
                slide.close()
                slide = open_slide(path, backend, mpp)
            with slide:
                result = predict_slide(slide, network, output, settings, resume, str(run))
        except DataError as err:
            failures.append(err)
            continue
        console.print(
            f"{path.name}: {result.tiles} tiles in {result.seconds:.0f} s -> {result.mask.name}, "
            f"{result.geojson.name}, {result.csv.name}, {result.thumbnail.name}"
        )
    return failures


# Whole-slide formats; inside a folder, other image files (also plain .tif) are tiles, as before.
SLIDE_SUFFIXES = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".ome.tif",
    ".ome.tiff",
)


def split_slides(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    """Slides and tile images among the inputs: a file given by name is a slide; a folder's files
    with a whole-slide suffix are slides and its other images are tiles."""
    from pathseg.data.folders import find_images
    from pathseg.errors import DataError

    slides, tiles = [], []
    for path in inputs:
        if path.is_file():
            slides.append(path)
            continue
        if not path.exists():
            raise DataError(path, "does not exist")
        inside = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SLIDE_SUFFIXES))
        slides += inside
        if not inside:
            tiles += find_images(path)
        else:
            with contextlib.suppress(DataError):  # a folder of slides only has no tiles
                tiles += [p for p in find_images(path) if p not in inside]
    return slides, tiles


def list_models_command() -> None:
    """List the registered networks."""
    from pathseg.models import list_models

    for name in list_models():
        console.print(name)
