"""``pathseg pretrain``: self-supervised diffusion pretraining (GenSelfDiff stage 1)."""

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
    run_config,
)


def register(app: typer.Typer) -> None:
    app.command()(pretrain)


def pretrain(
    config: ConfigOption = None,
    images: Annotated[
        list[Path] | None,
        typer.Option("--images", help="Folder of unlabeled images (or holding images/); repeatable."),
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option(help="Also generate this many synthetic tiles to pretrain on.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="U-Net preset: unet_small or unet.")] = None,
    steps: StepsOption = None,
    batch_size: BatchOption = None,
    crop_size: Annotated[int | None, typer.Option(help="Random crop size in pixels.")] = None,
    scale: ScaleOption = None,
    seed: SeedOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
) -> None:
    """Self-supervised pretraining: a diffusion denoiser on unlabeled images (GenSelfDiff stage 1).

    Fine-tune the result with `pathseg train --init RUN_FOLDER`.
    """
    from pathseg.methods.genselfdiff import PretrainConfig
    from pathseg.methods.genselfdiff import pretrain as run_pretrain

    pairs = option_pairs(
        [
            ("data.synthetic", synthetic),
            ("model.name", model),
            ("train.steps", steps),
            ("train.batch_size", batch_size),
            ("data.crop_size", crop_size),
            ("data.scale", scale),
            ("train.seed", seed),
            ("output", output),
        ]
    )
    if images:
        pairs.append("data.images=" + json.dumps([str(p) for p in images]))
    cfg = run_config(PretrainConfig, config, output, pairs + list(overrides or []), resume)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = run_pretrain(cfg, resume=resume)
    if "report" in outcome:
        best = outcome.get("best") or {}
        if best:
            console.print(f"best {best['metric']} {best['value']:.4f} at step {best['step']}")
        console.print(f"samples: {Path(cfg.output) / 'samples.png'}; report: {outcome['report']}")
