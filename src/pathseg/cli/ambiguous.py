"""``pathseg ambiguous train|sample``: ambiguous segmentation (CIMD), many plausible masks per image."""

from __future__ import annotations

import json
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
    run_config,
)


def register(app: typer.Typer) -> None:
    ambiguous_app = typer.Typer(
        help="Ambiguous segmentation (CIMD): train on several annotators, sample many plausible masks.",
        no_args_is_help=True,
    )
    ambiguous_app.command("train")(ambiguous_train)
    ambiguous_app.command("sample")(ambiguous_sample)
    app.add_typer(ambiguous_app, name="ambiguous")


LayoutOption = Annotated[
    str | None,
    typer.Option(help="Multi-annotator layout: pathseg, cimd or bubil (default: detected)."),
]
PoolOption = Annotated[str | None, typer.Option(help="BU-BIL annotators: experts, crowd or both.")]
AllowMissingOption = Annotated[
    bool,
    typer.Option("--allow-missing-annotators", help="Keep images that lack some annotators' masks."),
]

# The metrics shown after sampling, in this order (all of AmbiguityEvaluator's are in metrics.json).
SHOWN_METRICS = ("ged", "hm_iou", "ci", "s_c", "d_max", "d_a", "ece")


def ambiguous_train(
    config: ConfigOption = None,
    train_dir: Annotated[
        Path | None, typer.Option("--train", help="Multi-annotator folder (any layout).")
    ] = None,
    val_dir: Annotated[
        Path | None, typer.Option("--val", help="Validation folder (default: split from --train).")
    ] = None,
    test_dir: Annotated[
        Path | None, typer.Option("--test", help="Test folder, sampled and scored after training.")
    ] = None,
    layout: LayoutOption = None,
    pool: PoolOption = None,
    allow_missing: AllowMissingOption = False,
    classes: Annotated[
        str | None,
        typer.Option(help='Class map, e.g. "background=0,lesion=255" (default: the layout\'s own).'),
    ] = None,
    scale: ScaleOption = None,
    crop_size: Annotated[int | None, typer.Option(help="Random crop size in pixels.")] = None,
    steps: StepsOption = None,
    batch_size: BatchOption = None,
    seed: SeedOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
) -> None:
    """Train CIMD: a diffusion model of masks with a learned prior over annotator styles.

    Sample from the result with `pathseg ambiguous sample RUN IMAGES`.
    """
    from pathseg.methods.ambiguous.config import AmbiguousConfig
    from pathseg.methods.ambiguous.train import train

    pairs = option_pairs(
        [
            ("data.train", train_dir),
            ("data.val", val_dir),
            ("data.test", test_dir),
            ("data.layout", layout),
            ("data.pool", pool),
            ("data.allow_missing_annotators", True if allow_missing else None),
            ("data.scale", scale),
            ("data.crop_size", crop_size),
            ("train.steps", steps),
            ("train.batch_size", batch_size),
            ("train.seed", seed),
            ("output", output),
        ]
    )
    if classes is not None:
        pairs.append("data.classes=" + json.dumps(parse_classes(classes)))
    cfg = run_config(AmbiguousConfig, config, output, pairs + list(overrides or []), resume)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = train(cfg, resume=resume)
    best = outcome.get("best")
    if best:
        console.print(f"best validation {best['metric']} {best['value']:.4f} at step {best['step']}")
    if "test" in outcome:
        _print_summary(outcome["test"], f"test ({outcome['test']['images']} images)")
        console.print(f"test samples and metrics: {Path(cfg.output) / 'test'}")
    console.print(f"model: {Path(cfg.output) / 'model.safetensors'}")
    console.print(f"report: [bold]{outcome['report']}[/]")


def ambiguous_sample(
    run: Annotated[Path, typer.Argument(help="A finished `pathseg ambiguous train` run folder.")],
    images: Annotated[
        Path,
        typer.Argument(
            help="An image, a folder of images, or a multi-annotator folder (then the samples are scored)."
        ),
    ],
    output: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    samples: Annotated[int | None, typer.Option(help="Masks per image (default: the run's).")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddim or ddpm (default: the run's).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the run's).")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM stochasticity (0: deterministic).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", help="Samples per forward pass.")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (bf16 where the hardware has it), bf16 or fp32 (default: the run's)."),
    ] = None,
    seed: SeedOption = None,
    layout: LayoutOption = None,
    pool: PoolOption = None,
    allow_missing: AllowMissingOption = False,
) -> None:
    """Draw many plausible masks per image, with mean, variance and entropy maps and a panel.

    Given a multi-annotator folder, the samples are scored against the annotators (GED, HM-IoU,
    CI) into metrics.json and per_image.csv.
    """
    from pathseg.errors import ConfigError
    from pathseg.methods.ambiguous.sample import sample_images

    if sampler is not None and sampler not in ("ddim", "ddpm"):
        raise ConfigError(f"--sampler must be ddim or ddpm, not {sampler!r}")
    summary = sample_images(
        run,
        images,
        output,
        samples,
        sampler,
        steps,
        seed,
        eta=eta,
        batch_size=batch_size,
        precision=precision,
        layout=layout,
        pool=pool or "experts",
        allow_missing=allow_missing,
    )
    if "ged" in summary:
        _print_summary(summary, f"{images} ({summary['images']} images)")
        console.print(f"metrics: {output / 'metrics.json'}, {output / 'per_image.csv'}")
    console.print(
        f"wrote samples for {summary['images']} images to {output} "
        f"({summary['mean_seconds']:.2f} s per image)"
    )


def _print_summary(summary: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SHOWN_METRICS:
        if key in summary:
            table.add_row(key, f"{summary[key]:.4f}")
    console.print(table)
