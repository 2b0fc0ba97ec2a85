"""The ``pathseg`` command line. Each command parses its options into a config and calls one function.

Every error caused by input (a bad file, folder or config key) is printed as one line and the
command exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pathseg.errors import ConfigError, PathsegError

app = typer.Typer(
    help="Label-efficient segmentation of histopathology images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Create and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
weak_app = typer.Typer(
    help="Weak supervision from patch labels (MLPS): classify -> cam -> train, or run for all three.",
    no_args_is_help=True,
)
app.add_typer(weak_app, name="weak")
console = Console()
err_console = Console(stderr=True)


def main() -> None:
    """Console entry point: ``pathseg``."""
    try:
        app()
    except PathsegError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


# --------------------------------------------------------------------------------------- train


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
) -> list[str]:
    """Turn the convenience options into ``key=value`` overrides (applied before ``--set``)."""
    pairs = _option_pairs(
        [
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


def _option_pairs(items: list[tuple[str, object]]) -> list[str]:
    """``key=value`` overrides for the options the user gave (None means "not given")."""
    return [f"{key}={value}" for key, value in items if value is not None]


def _run_config(schema, config: Path | None, output: Path | None, pairs: list[str], resume: bool):
    """The config of a new run (refusing to overwrite one) or, with ``resume``, of the run in ``--out``."""
    from pathseg.config import resolve_config

    if resume:
        return _resume_config(schema, config, output, pairs)
    cfg = resolve_config(schema, config, pairs)
    _refuse_existing_run(Path(cfg.output))
    return cfg


def parse_classes(text: str) -> dict[str, int] | list[str]:
    """``"background=0,gland=255"`` -> mapping; ``"tumour,stroma"`` -> names with values 0..K-1."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if all("=" not in item for item in items):
        return items
    mapping = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            mapping[name.strip()] = int(value)
        except ValueError:
            raise ConfigError(
                f"--classes: {item!r} must look like name=value with an integer value"
            ) from None
    return mapping


def parse_loss(text: str) -> dict[str, float]:
    """``"ce+dice"`` or ``"ce:1,dice:0.5"`` -> weights per loss term."""
    terms = {}
    for item in text.replace("+", ",").split(","):
        name, _, weight = item.strip().partition(":")
        try:
            terms[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"--loss: weight in {item!r} is not a number") from None
    return terms


# Options shared by the training commands (train, pretrain).
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
StepsOption = Annotated[int | None, typer.Option(help="Optimizer steps.")]
BatchOption = Annotated[int | None, typer.Option("--batch-size", "-b", help="Batch size per process.")]
ScaleOption = Annotated[float | None, typer.Option(help="Resize factor applied to images (0.5 = half).")]
SeedOption = Annotated[int | None, typer.Option(help="Random seed.")]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Any config key: --set train.lr=3e-4")]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")]


@app.command()
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
        )
        + ([f"init={init}"] if init is not None else [])
        + list(overrides or [])
    )
    cfg = _run_config(SupervisedConfig, config, output, pairs, resume)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    started = time.perf_counter()
    outcome = supervised.train(cfg, resume=resume)
    outcome["wall_s"] = time.perf_counter() - started
    if is_main_process():
        report = build_run_report(Path(cfg.output), monitor=cfg.train.monitor)
        if "test" in outcome:
            _print_metrics(outcome["test"], "test metrics")
        console.print(f"report: {report}")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "classes":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / "checkpoints" / "last.json").exists():
        raise ConfigError(
            f"{run_dir}: a run already exists here; use --resume to continue it or choose another --out"
        )


def _resume_config(schema, config: Path | None, output: Path | None, pairs: list[str]):
    """The saved config of the run in ``--out``; only ``train.steps`` may change (to train longer)."""
    from pathseg.config import resolve_config, to_plain

    if output is None:
        raise ConfigError("--resume needs --out RUN_FOLDER (the run to continue)")
    saved_file = output / "config.yaml"
    if not saved_file.exists():
        raise ConfigError(f"{output}: no config.yaml; is this a pathseg run folder?")
    saved = resolve_config(schema, saved_file)
    if config is None and not pairs:
        return saved
    wanted = resolve_config(schema, config or saved_file, pairs)
    saved_flat, wanted_flat = _flatten(to_plain(saved)), _flatten(to_plain(wanted))
    changed = sorted(
        k
        for k in saved_flat.keys() | wanted_flat.keys()
        if k not in ("train.steps", "output") and saved_flat.get(k) != wanted_flat.get(k)
    )
    if changed:
        raise ConfigError(
            f"{saved_file}: --resume continues the saved config, but these keys differ: {', '.join(changed)} "
            "(only train.steps may change); start a new run instead"
        )
    return wanted


@app.command()
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

    pairs = _option_pairs(
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
    cfg = _run_config(PretrainConfig, config, output, pairs + list(overrides or []), resume)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = run_pretrain(cfg, resume=resume)
    if "report" in outcome:
        best = outcome.get("best") or {}
        if best:
            console.print(f"best {best['metric']} {best['value']:.4f} at step {best['step']}")
        console.print(f"samples: {Path(cfg.output) / 'samples.png'}; report: {outcome['report']}")


# ------------------------------------------------------------------------------ evaluate/predict


@app.command()
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
    from pathseg.methods.supervised import load_run, window_settings

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
    )
    _print_metrics(evaluator.summary(), f"{data} ({len(samples)} images)")
    console.print(f"results: {out}/metrics.json, {out}/per_image.csv, {out}/overlays/")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    images: Annotated[Path, typer.Argument(help="Folder of images to segment.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Output folder (masks/ and overlays/).")],
    overlays: Annotated[bool, typer.Option(help="Also save overlay PNGs.")] = True,
) -> None:
    """Segment a folder of images: palette PNG masks of class indices plus overlays."""
    from pathseg.data.folders import find_images
    from pathseg.inference.evaluate import predict_paths
    from pathseg.methods.supervised import load_run, window_settings

    model, cfg, class_map = load_run(run)
    paths = find_images(images)
    written = predict_paths(model, paths, class_map, window_settings(cfg), output, cfg.data.scale, overlays)
    classes = ", ".join(f"{i}={name}" for i, name in enumerate(class_map.names))
    console.print(f"wrote {len(written)} masks to {output / 'masks'} (pixel values: {classes})")


@app.command("models")
def list_models_command() -> None:
    """List the registered networks."""
    from pathseg.models import list_models

    for name in list_models():
        console.print(name)


# --------------------------------------------------------------------------------------- data


@data_app.command("synth")
def data_synth(
    output: Annotated[
        Path, typer.Argument(help="Folder to write (images/, masks/, instances/, tissue/ ...).")
    ],
    num_images: Annotated[int, typer.Option("--num", "-n", help="Number of tiles.")] = 64,
    size: Annotated[int, typer.Option(help="Tile size in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed; tile i is the same whatever --num is.")] = 0,
) -> None:
    """Write a procedural H&E-like dataset (glands, nuclei, tissue classes) for demos and tests."""
    from pathseg.data.synthetic import SynthConfig, write_dataset

    with console.status("generating") as status:
        write_dataset(
            output,
            num_images,
            seed=seed,
            config=SynthConfig(size=size),
            progress=lambda i, n: status.update(f"generating tile {i}/{n}"),
        )
    console.print(f"wrote {num_images} tiles to {output} (see {output / 'dataset.yaml'})")


@data_app.command("check")
def data_check(
    folder: Annotated[Path, typer.Argument(help="Folder with images/ and masks/.")],
    classes: Annotated[
        str, typer.Option(help='Class map, e.g. "background=0,gland=255".')
    ] = "background=0,gland=255",
    mask_suffix: Annotated[str, typer.Option(help="Mask stem suffix, e.g. _anno.")] = "",
) -> None:
    """Open every image and mask and report the first problem (unreadable, size mismatch, bad values)."""
    from pathseg.data.classes import ClassMap
    from pathseg.data.folders import check_samples, discover_dataset

    class_map = ClassMap.from_config(parse_classes(classes))
    samples = discover_dataset(folder, mask_suffix=mask_suffix)
    check_samples(samples, class_map)
    console.print(f"{folder}: {len(samples)} image/mask pairs, all readable and consistent")


@data_app.command("patch-labels")
def data_patch_labels(
    folder: Annotated[Path, typer.Argument(help="Folder with images/ and a mask folder.")],
    output: Annotated[Path, typer.Argument(help="Folder to write (images/, masks/, labels.csv).")],
    classes: Annotated[
        str, typer.Option(help='Class map of the masks, e.g. "tumour=0,stroma=1,normal=2".')
    ] = "tumour=0,stroma=1,normal=2",
    ignore: Annotated[
        str | None, typer.Option(help='Mask values left out (e.g. "3" for WSSS4LUAD background).')
    ] = None,
    masks: Annotated[
        str | None, typer.Option(help="Name of the mask folder beside images/ (default: masks).")
    ] = None,
    patch_size: Annotated[int, typer.Option(help="Patch side in pixels.")] = 224,
    stride: Annotated[int | None, typer.Option(help="Step between patches (default: patch size).")] = None,
    min_fraction: Annotated[
        float, typer.Option(help="A class is in a patch's label if it covers more than this share.")
    ] = 0.05,
    min_labelled: Annotated[
        float, typer.Option(help="Skip patches whose labelled pixels are below this share.")
    ] = 0.5,
    style: Annotated[str, typer.Option(help="Label style in names: comma, space or compact.")] = "comma",
) -> None:
    """Cut image + mask pairs into patches labelled by the classes they contain (weak-supervision data)."""
    from pathseg.data.classes import ClassMap
    from pathseg.data.folders import discover_dataset, pair_images_and_masks
    from pathseg.data.patch_labels import make_patch_label_set

    ignore_values = [int(v) for v in ignore.split(",")] if ignore else []
    class_map = ClassMap.from_config(parse_classes(classes), ignore_values=ignore_values)
    if masks is not None:
        samples = pair_images_and_masks(folder / "images", folder / masks)
    else:
        samples = discover_dataset(folder)
    counts = make_patch_label_set(
        samples, class_map, output, patch_size, stride, min_fraction, min_labelled, style
    )
    console.print(
        f"wrote {counts['patches']} patches from {counts['images']} images to {output} "
        f"(skipped {counts['skipped']}); patches per class: {counts['patches_per_class']}"
    )


# --------------------------------------------------------------------------------------- weak


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
    pairs = _option_pairs(
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
        pairs.append(f"data.ignore_values={json.dumps([int(v) for v in ignore.split(',')])}")
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


def _saved_weak_config(output: Path | None, pairs: list[str]):
    """The run's saved config; ``--set`` overrides apply on top (e.g. cam.layers before `weak cam`)."""
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


@weak_app.command("classify")
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
    pairs += _option_pairs([("classifier.train.steps", steps)])
    cfg = _saved_weak_config(output, pairs) if resume else _new_weak_config(config, pairs)
    write_run_info(Path(cfg.output), to_plain(cfg))
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = weak.train_classifier(cfg, resume=resume)
    console.print(f"classifier: {outcome['run_dir']} (best {outcome['best']})")


@weak_app.command("cam")
def weak_cam(output: OutOption = None, overrides: SetOption = None) -> None:
    """Stage 2: Grad-CAMs of the configured layers -> one pseudo mask per layer and patch (resumable)."""
    from pathseg.methods import weak

    cfg = _saved_weak_config(output, list(overrides or []))
    summary = weak.generate_pseudo_masks(cfg)
    console.print(f"pseudo masks: {summary['patches']} patches x {len(summary['layers'])} layers")
    for layer, scores in summary.get("quality", {}).items():
        _print_metrics(scores, f"pseudo masks of {layer} vs pixel truth")


@weak_app.command("train")
def weak_train(
    steps: StepsOption = None,
    output: OutOption = None,
    overrides: SetOption = None,
    resume: ResumeOption = False,
) -> None:
    """Stage 3: train the segmenter on every layer's pseudo masks; evaluate it (gated) on --test."""
    from pathseg.methods import weak

    cfg = _saved_weak_config(
        output, _option_pairs([("segmenter.train.steps", steps)]) + list(overrides or [])
    )
    outcome = weak.train_segmenter(cfg, resume=resume)
    for name in ("test", "test_ungated"):
        if name in outcome:
            _print_metrics(outcome[name], f"segmenter on test ({name})")


@weak_app.command("run")
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
    cfg = _saved_weak_config(output, pairs) if resume else _new_weak_config(config, pairs)
    console.print(f"run folder: [bold]{cfg.output}[/]")
    outcome = weak.run_all(cfg, resume=resume)
    segmenter = outcome.get("segmenter", {})
    for name in ("test", "test_ungated"):
        if name in segmenter:
            _print_metrics(segmenter[name], f"segmenter on test ({name})")


# --------------------------------------------------------------------------------------- demo


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("demo_out"),
    steps: Annotated[int, typer.Option(help="Training steps.")] = 300,
    num_images: Annotated[int, typer.Option("--num", "-n", help="Synthetic tiles to generate.")] = 48,
    size: Annotated[int, typer.Option(help="Tile size.")] = 192,
    pretrain_steps: Annotated[
        int,
        typer.Option(
            "--pretrain",
            help="Also pretrain a diffusion denoiser for this many steps on the training tiles "
            "(masks unused), fine-tune it, and compare with the same network from random init.",
        ),
    ] = 0,
) -> None:
    """Synthetic data -> train -> evaluate -> HTML report, in a few minutes on a laptop CPU."""
    import shutil

    from pathseg.config import SupervisedConfig, resolve_config
    from pathseg.data.synthetic import SynthConfig, write_dataset
    from pathseg.methods import supervised
    from pathseg.report.run_report import build_run_report

    started = time.perf_counter()
    data_dir = output / "data"
    total = 4 if pretrain_steps else 3
    for folder in (data_dir, output / "run", output / "pretrain", output / "run_pretrained"):
        if folder.exists():
            shutil.rmtree(folder)
    console.print(f"1/{total} generating {num_images} synthetic H&E tiles in {data_dir}")
    full = data_dir / "all"
    write_dataset(full, num_images, seed=0, config=SynthConfig(size=size))
    _split_demo_data(full, data_dir, test_fraction=0.25)
    run_dir = output / "run"
    common = [
        f"data.train={data_dir / 'train'}",
        f"data.test={data_dir / 'test'}",
        f"data.groups_csv={full / 'groups.csv'}",
        'data.classes={"background": 0, "gland": 1}',
        "data.crop_size=128",
        "data.val_fraction=0.2",
        "data.augment.stain_jitter=0.05",
        "model.name=unet_small",
        f"train.steps={steps}",
        "train.batch_size=8",
        "train.lr=2e-3",
        "train.warmup_steps=20",
        f"train.eval_every={max(steps // 4, 1)}",
        f"train.checkpoint_every={max(steps // 4, 1)}",
        "train.ema_decay=0.99",
    ]
    if pretrain_steps:  # the scratch run uses exactly the network the denoiser turns into
        common += ["model.time_embedding=true", "model.fixed_timestep=0"]
    cfg = resolve_config(SupervisedConfig, None, [*common, f"output={run_dir}"])
    console.print(f"2/{total} training {cfg.model.name} for {steps} steps")
    outcome = supervised.train(cfg)
    sections = []
    if pretrain_steps:
        sections = _demo_pretrained(output, data_dir, common, pretrain_steps, outcome, total)
    console.print(f"{total}/{total} evaluating on held-out tiles and writing the report")
    elapsed = time.perf_counter() - started
    intro = (
        f"<p>Synthetic H&amp;E-like tiles ({num_images} at {size} px) from <code>pathseg data synth</code>, "
        f"split by pseudo-patient; a {cfg.model.name} trained for {steps} steps. Total wall time "
        f"{elapsed:.0f} s.</p>"
    )
    report = build_run_report(
        run_dir, "pathseg demo: gland segmentation on synthetic tissue", [("What this is", intro), *sections]
    )
    title = "demo test metrics" + (" (random init)" if pretrain_steps else "")
    _print_metrics(outcome.get("test", {}), title)
    console.print(f"report: [bold]{report}[/] ({elapsed:.0f} s)")


def _demo_pretrained(
    output: Path, data_dir: Path, common: list[str], pretrain_steps: int, scratch: dict, total: int
) -> list[tuple[str, str]]:
    """Pretrain a denoiser on the demo's training tiles, fine-tune it, return report sections."""
    from pathseg.config import SupervisedConfig, resolve_config
    from pathseg.methods import genselfdiff, supervised
    from pathseg.report.html import image_tag, table

    pretrain_dir = output / "pretrain"
    pretrain_cfg = resolve_config(
        genselfdiff.PretrainConfig,
        None,
        [
            f"data.images={json.dumps([str(data_dir / 'train')])}",
            "data.crop_size=128",
            "model.name=unet_small",
            f"train.steps={pretrain_steps}",
            "train.lr=1e-3",
            "train.warmup_steps=20",
            "train.ema_decay=0.99",
            f"train.eval_every={max(pretrain_steps // 3, 1)}",
            f"train.checkpoint_every={max(pretrain_steps // 3, 1)}",
            f"output={pretrain_dir}",
        ],
    )
    console.print(f"3/{total} pretraining a diffusion denoiser for {pretrain_steps} steps (masks unused)")
    genselfdiff.pretrain(pretrain_cfg)
    finetune_dir = output / "run_pretrained"
    cfg = resolve_config(SupervisedConfig, None, [*common, f"init={pretrain_dir}", f"output={finetune_dir}"])
    console.print("   fine-tuning the pretrained denoiser with the same recipe")
    pretrained = supervised.train(cfg)
    _print_metrics(pretrained.get("test", {}), "demo test metrics (diffusion-pretrained)")
    keys = ["dice", "iou", "object_f1", "object_dice", "hd95"]
    rows = [
        {"initialisation": name, **{k: result.get("test", {}).get(k, float("nan")) for k in keys}}
        for name, result in (("random", scratch), ("diffusion-pretrained", pretrained))
    ]
    run_dir = output / "run"
    body = (
        "<p>The same U-Net and recipe, started from random weights (this run) or from a denoiser "
        f"pretrained for {pretrain_steps} steps on the training tiles without their masks "
        "(<a href='../run_pretrained/report.html'>its report</a>, "
        "<a href='../pretrain/report.html'>pretraining report</a>).</p>"
        + table(rows, ["initialisation", *keys])
        # relative to the report in run/
        + image_tag(Path("../pretrain/real.png"), run_dir, "real training crops")
        + image_tag(Path("../pretrain/samples.png"), run_dir, "samples from the pretrained denoiser")
    )
    return [("Diffusion pretraining vs random initialisation", body)]


def _split_demo_data(full: Path, data_dir: Path, test_fraction: float) -> None:
    """Copy whole pseudo-patients into train/ and test/ so no patient is on both sides."""
    import csv
    import shutil

    from pathseg.data.folders import discover_dataset
    from pathseg.data.splits import train_val_split

    with open(full / "groups.csv") as handle:
        groups = {row["name"]: row["patient"] for row in csv.DictReader(handle)}
    samples = discover_dataset(full)
    train_samples, test_samples = train_val_split(samples, test_fraction, seed=0, groups=groups)
    for name, part in (("train", train_samples), ("test", test_samples)):
        for sub in ("images", "masks"):
            (data_dir / name / sub).mkdir(parents=True, exist_ok=True)
        for sample in part:
            shutil.copy(sample.image, data_dir / name / "images" / sample.image.name)
            shutil.copy(sample.mask, data_dir / name / "masks" / sample.mask.name)


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    keys = [
        "dice",
        "iou",
        "global_dice",
        "pixel_accuracy",
        "precision",
        "recall",
        "object_f1",
        "object_dice",
        "hd95",
        "object_hausdorff",
        "miou",
        "fwiou",
    ]
    keys += sorted(k for k in metrics if k.startswith("iou/"))
    shown = [k for k in keys if k in metrics]
    if not shown:
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in shown:
        table.add_row(key, f"{metrics[key]:.4f}")
    console.print(table)


if __name__ == "__main__":
    main()
