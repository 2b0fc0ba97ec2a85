"""``pathseg nuclei train|predict``: nucleus instance segmentation (HoVer-style maps + watershed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathseg.cli.common import (
    BatchOption,
    ConfigOption,
    OutOption,
    ResumeOption,
    SeedOption,
    SetOption,
    StepsOption,
    console,
    option_pairs,
    run_config,
)


def register(app: typer.Typer) -> None:
    nuclei_app = typer.Typer(
        help="Nucleus instance segmentation: train on instance maps, polygons (MoNuSeg XML) or masks.",
        no_args_is_help=True,
    )
    nuclei_app.command("train")(nuclei_train)
    nuclei_app.command("predict")(nuclei_predict)
    nuclei_app.command("pretrain")(nuclei_pretrain)
    app.add_typer(nuclei_app, name="nuclei")


SHOWN_METRICS = ("aji", "pq", "dq", "sq", "dice", "pooled_aji")


def nuclei_train(
    config: ConfigOption = None,
    train_dir: Annotated[
        Path | None,
        typer.Option("--train", help="Folder with images/ and instances/, annotations/ or masks/."),
    ] = None,
    val_dir: Annotated[
        Path | None, typer.Option("--val", help="Validation folder (default: split from --train).")
    ] = None,
    test_dir: Annotated[
        Path | None, typer.Option("--test", help="Test folder, predicted and scored after training.")
    ] = None,
    label_fraction: Annotated[
        float | None, typer.Option(help="Share of the training images whose labels are used.")
    ] = None,
    crop_size: Annotated[int | None, typer.Option(help="Training crop and inference tile size.")] = None,
    init: Annotated[
        Path | None, typer.Option(help="Start from these weights (a pretraining run or its .safetensors).")
    ] = None,
    steps: StepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
) -> None:
    """Train the nucleus segmenter; with --test, score AJI / PQ / Dice and write its predictions."""
    from pathseg.methods.nuclei import NucleiConfig, train

    pairs = option_pairs(
        [
            ("data.train", train_dir),
            ("data.val", val_dir),
            ("data.test", test_dir),
            ("data.label_fraction", label_fraction),
            ("data.crop_size", crop_size),
            ("init", init),
            ("train.steps", steps),
            ("train.batch_size", batch_size),
            ("train.seed", seed),
            ("output", output),
        ]
    )
    cfg = run_config(NucleiConfig, config, output, pairs + list(overrides or []), resume)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = train(cfg, resume=resume)
    best = outcome.get("best")
    if best:
        console.print(f"best validation {best['metric']} {best['value']:.4f} at step {best['step']}")
    if "test" in outcome:
        test = outcome["test"]
        shown = ", ".join(f"{k} {test[k]:.4f}" for k in SHOWN_METRICS)
        console.print(f"test ({test['num_images']} images): {shown}")
        console.print(f"test predictions: {Path(cfg.output) / 'test'}")
    console.print(f"model: {Path(cfg.output) / 'model.safetensors'}")


def nuclei_predict(
    run: Annotated[Path, typer.Argument(help="A finished `pathseg nuclei train` run folder.")],
    images: Annotated[Path, typer.Argument(help="An image or a folder of images.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("nuclei_predictions"),
) -> None:
    """Per image: a 16-bit instance map, QuPath GeoJSON detections, a per-nucleus CSV, an overlay."""
    from pathseg.methods.nuclei.predict import predict_folder

    rows = predict_folder(run, images, out, report=console.print)
    total = sum(row["nuclei"] for row in rows)
    console.print(f"{len(rows)} images, {total} nuclei -> [bold]{out}[/]")


def nuclei_pretrain(
    config: ConfigOption = None,
    labelled: Annotated[
        Path | None,
        typer.Option(help="Labelled nucleus folder whose instance statistics the pseudo masks follow."),
    ] = None,
    images: Annotated[
        list[Path] | None,
        typer.Option("--images", help="Unlabeled H&E folder at the same magnification; repeatable."),
    ] = None,
    label_fraction: Annotated[
        float | None, typer.Option(help="Fit the pseudo masks on this share of --labelled (as train does).")
    ] = None,
    monitor: Annotated[
        Path | None,
        typer.Option(help="Labelled (non-test) folder scored zero-shot at each evaluation; selects nothing."),
    ] = None,
    crop_size: Annotated[int | None, typer.Option(help="Training crop size in pixels.")] = None,
    steps: StepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
) -> None:
    """Nucleus-aware pretraining: pseudo masks <-> H&E translation with instance guidance (UNITPathSSL).

    Fine-tune the result with `pathseg nuclei train --init RUN_FOLDER`.
    """
    import json

    from pathseg.methods.nuclei import NucleusPretrainConfig, pretrain

    pairs = option_pairs(
        [
            ("data.labelled", labelled),
            ("data.label_fraction", label_fraction),
            ("data.monitor", monitor),
            ("data.crop_size", crop_size),
            ("train.steps", steps),
            ("train.batch_size", batch_size),
            ("train.seed", seed),
            ("output", output),
        ]
    )
    if images:
        pairs.append("data.images=" + json.dumps([str(p) for p in images]))
    cfg = run_config(NucleusPretrainConfig, config, output, pairs + list(overrides or []), resume)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = pretrain(cfg, resume=resume)
    rate = outcome.get("images_per_s")
    if rate:
        console.print(f"{rate:.2f} image pairs/s")
    console.print(f"samples: {Path(cfg.output) / 'samples.png'}; report: {outcome['report']}")
    console.print(f"pretrained segmenter: {Path(cfg.output) / 'model.safetensors'}")
