"""``pathseg weak classify|cam|train|run``: weak supervision from patch labels (MLPS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pathseg.cli.common import (
    ConfigOption,
    OutOption,
    ResumeOption,
    SeedOption,
    SetOption,
    StepsOption,
    console,
    option_pairs,
    parse_values,
    print_metrics,
    resume_config,
)
from pathseg.errors import ConfigError


def register(app: typer.Typer) -> None:
    weak_app = typer.Typer(
        help="Weak supervision from patch labels (MLPS): classify -> cam -> train, or run for all three.",
        no_args_is_help=True,
    )
    weak_app.command("classify")(weak_classify)
    weak_app.command("cam")(weak_cam)
    weak_app.command("train")(weak_train)
    weak_app.command("run")(weak_run)
    app.add_typer(weak_app, name="weak")


PatchesOption = Annotated[
    Path | None, typer.Option("--patches", help="Patch folder; labels in file names or --labels-csv.")
]
LabelsCsvOption = Annotated[Path | None, typer.Option("--labels-csv", help="CSV of patch labels.")]
NamesOption = Annotated[
    str | None, typer.Option("--classes", help='Class names in label order, e.g. "tumour,stroma,normal".')
]
PixelValOption = Annotated[Path | None, typer.Option("--val", help="Pixel-labelled validation folder.")]
PixelTestOption = Annotated[Path | None, typer.Option("--test", help="Pixel-labelled test folder.")]
IgnoreOption = Annotated[
    str | None, typer.Option("--ignore", help='Mask values left out of metrics, e.g. "3".')
]
MaskFolderOption = Annotated[
    str | None,
    typer.Option("--mask-folder", help="Masks folder beside images/ in --val/--test (default: masks)."),
]


def _weak_pairs(
    patches, labels_csv, classes, val, test, ignore, mask_folder, seed, output, overrides
) -> list[str]:
    pairs = option_pairs(
        [
            ("data.mask_folder", mask_folder),
            ("data.patches", patches),
            ("data.labels_csv", labels_csv),
            ("data.val", val),
            ("data.test", test),
            ("classifier.train.seed", seed),
            ("segmenter.train.seed", seed),
            ("output", output),
        ]
    )
    if classes is not None:
        pairs.append(f"data.classes={json.dumps([c.strip() for c in classes.split(',') if c.strip()])}")
    if ignore is not None:
        pairs.append(f"data.ignore_values={json.dumps(parse_values(ignore, '--ignore'))}")
    return pairs + list(overrides or [])


def _new_weak_config(config: Path | None, pairs: list[str]):
    from pathseg.config import resolve_config
    from pathseg.methods import weak

    cfg = resolve_config(weak.WeakConfig, config, pairs)
    weak.check_config(cfg)
    if (Path(cfg.output) / "config.yaml").exists():
        raise ConfigError(
            f"{cfg.output}: a weak-supervision run already exists here; use --resume to continue it "
            "or choose another --out"
        )
    return cfg


def _resumed_weak_config(config: Path | None, output: Path | None, pairs: list[str]):
    """The saved config of the run in ``--out`` for ``--resume``: only step counts and budgets may
    change, so a resumed stage trains what it started."""
    from pathseg.methods import weak

    cfg = resume_config(weak.WeakConfig, config, output, pairs)
    weak.check_config(cfg)
    return cfg


def _saved_weak_config(output: Path | None, pairs: list[str]):
    """The run's saved config for a later stage; ``--set`` overrides apply on top (e.g. cam.layers
    before `weak cam`) without rewriting config.yaml."""
    from pathseg.config import resolve_config
    from pathseg.methods import weak

    if output is None:
        raise ConfigError("give the run folder with --out (where `pathseg weak classify` wrote config.yaml)")
    saved = output / "config.yaml"
    if not saved.exists():
        raise ConfigError(
            f"{output}: no config.yaml; start with `pathseg weak classify` or `pathseg weak run`"
        )
    cfg = resolve_config(weak.WeakConfig, saved, pairs)
    weak.check_config(cfg)
    return cfg


def weak_classify(
    config: ConfigOption = None,
    patches: PatchesOption = None,
    labels_csv: LabelsCsvOption = None,
    classes: NamesOption = None,
    val: PixelValOption = None,
    test: PixelTestOption = None,
    ignore: IgnoreOption = None,
    mask_folder: MaskFolderOption = None,
    steps: StepsOption = None,
    seed: SeedOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
) -> None:
    """Stage 1: train the multi-label patch classifier (with Progressive Dropout Attention)."""
    from pathseg.config import to_plain
    from pathseg.engine import write_run_info
    from pathseg.methods import weak

    pairs = _weak_pairs(patches, labels_csv, classes, val, test, ignore, mask_folder, seed, output, overrides)
    pairs += option_pairs([("classifier.train.steps", steps)])
    cfg = _resumed_weak_config(config, output, pairs) if resume else _new_weak_config(config, pairs)
    write_run_info(Path(cfg.output), to_plain(cfg))
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = weak.train_classifier(cfg, resume=resume)
    console.print(f"classifier: {outcome['run_dir']} (best {outcome['best']})")


def weak_cam(output: OutOption = None, overrides: SetOption = None) -> None:
    """Stage 2: Grad-CAMs of the configured layers -> one pseudo mask per layer and patch (resumable)."""
    from pathseg.methods import weak

    cfg = _saved_weak_config(output, list(overrides or []))
    summary = weak.generate_pseudo_masks(cfg)
    console.print(f"pseudo masks: {summary['patches']} patches x {len(summary['layers'])} layers")
    for layer, scores in summary.get("quality", {}).items():
        print_metrics(scores, f"pseudo masks of {layer} vs pixel truth")


def weak_train(
    steps: StepsOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
) -> None:
    """Stage 3: train the segmenter on every layer's pseudo masks; evaluate it (gated) on --test."""
    from pathseg.methods import weak

    pairs = option_pairs([("segmenter.train.steps", steps)]) + list(overrides or [])
    cfg = _resumed_weak_config(None, output, pairs) if resume else _saved_weak_config(output, pairs)
    outcome = weak.train_segmenter(cfg, resume=resume)
    for name in ("test", "test_ungated"):
        if name in outcome:
            print_metrics(outcome[name], f"segmenter on test ({name})")
    if "report" in outcome:
        console.print(f"report: {outcome['report']}")


def weak_run(
    config: ConfigOption = None,
    patches: PatchesOption = None,
    labels_csv: LabelsCsvOption = None,
    classes: NamesOption = None,
    val: PixelValOption = None,
    test: PixelTestOption = None,
    ignore: IgnoreOption = None,
    mask_folder: MaskFolderOption = None,
    seed: SeedOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
) -> None:
    """All three stages; with --resume, finished stages are skipped and the running one continues."""
    from pathseg.methods import weak

    pairs = _weak_pairs(patches, labels_csv, classes, val, test, ignore, mask_folder, seed, output, overrides)
    cfg = _resumed_weak_config(config, output, pairs) if resume else _new_weak_config(config, pairs)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = weak.run_all(cfg, resume=resume)
    segmenter = outcome.get("segmenter", {})
    for name in ("test", "test_ungated"):
        if name in segmenter:
            print_metrics(segmenter[name], f"segmenter on test ({name})")
    console.print(f"report: {weak.build_weak_report(cfg)}")
