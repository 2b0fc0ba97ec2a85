"""What the command modules share: console objects, common options, option parsing, run configs.

A new run refuses to overwrite an existing one; ``--resume`` continues the config saved in the
run folder, where only ``train.steps`` and ``train.budget_minutes`` may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pathseg.errors import ConfigError, DataError

# soft_wrap: long lines (paths) stay whole when piped or logged instead of breaking at 80 columns
console = Console(soft_wrap=True)
err_console = Console(stderr=True)


def print_error(error: object) -> None:
    """``error: <message>`` as one line on stderr. The message is escaped: file names such as
    ``scan [he].png`` are not rich markup (unescaped, ``[he]`` would vanish from the line)."""
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)


def print_warning(message: object) -> None:
    """``warning: <message>`` as one line on stderr (escaped like :func:`print_error`)."""
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


# Options shared by several commands (train, pretrain, weak).
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
StepsOption = Annotated[int | None, typer.Option(help="Optimizer steps.")]
BatchOption = Annotated[int | None, typer.Option("--batch-size", "-b", help="Batch size per process.")]
ScaleOption = Annotated[float | None, typer.Option(help="Resize factor applied to images (0.5 = half).")]
SeedOption = Annotated[int | None, typer.Option(help="Random seed.")]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Any config key: --set train.lr=3e-4")]
ResumeOption = Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")]


def option_pairs(items: list[tuple[str, object]]) -> list[str]:
    """``key=value`` overrides for the options the user gave (None means "not given")."""
    return [f"{key}={value}" for key, value in items if value is not None]


def run_config(schema, config: Path | None, output: Path | None, pairs: list[str], resume: bool):
    """The config of a new run (refusing to overwrite one) or, with ``resume``, of the run in ``--out``."""
    from pathseg.config import resolve_config

    if resume:
        return resume_config(schema, config, output, pairs)
    cfg = resolve_config(schema, config, pairs)
    refuse_existing_run(Path(cfg.output))
    return cfg


def parse_classes(text: str) -> dict[str, int | list[int]] | list[str]:
    """``"background=0,gland=255"`` -> mapping; ``"gland=1|255"``: either value stands for the class;
    ``"tumour,stroma"`` -> names with values 0..K-1."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if all("=" not in item for item in items):
        return items
    mapping: dict[str, int | list[int]] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            values = [int(v) for v in value.split("|")]
        except ValueError:
            raise ConfigError(
                f"--classes: {item!r} must look like name=value (or name=v1|v2) with integer values"
            ) from None
        mapping[name.strip()] = values[0] if len(values) == 1 else values
    return mapping


def parse_values(text: str | None, option: str) -> list[int]:
    """``"3"`` or ``"3,4"`` -> mask values (``[]`` for None)."""
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f'{option}: {text!r} must be mask values, e.g. "3" or "3,4"') from None


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


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "classes":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def refuse_existing_run(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(run_dir, "is a file, not a folder (--out names the run folder to create)")
    if (run_dir / "checkpoints" / "last.json").exists():
        raise ConfigError(
            f"{run_dir}: a run already exists here; use --resume to continue it or choose another --out"
        )


# What --resume may change: how long to train, and where the run folder is named from.
RESUMABLE_KEYS = ("train.steps", "train.budget_minutes", "output")


def resumable(key: str) -> bool:
    """Whether ``--resume`` may change ``key``: one of ``RESUMABLE_KEYS``, also inside a method's
    section (``classifier.train.steps``)."""
    return any(key == k or key.endswith(f".{k}") for k in RESUMABLE_KEYS)


def resume_config(schema, config: Path | None, output: Path | None, pairs: list[str]):
    """The saved config of the run in ``--out``; only ``train.steps`` and ``train.budget_minutes``
    may change (to train longer)."""
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
        if not resumable(k) and saved_flat.get(k) != wanted_flat.get(k)
    )
    if changed:
        raise ConfigError(
            f"{saved_file}: --resume continues the saved config, but these keys differ: {', '.join(changed)} "
            "(only train.steps and train.budget_minutes may change); start a new run instead"
        )
    return wanted


def print_metrics(metrics: dict[str, float], title: str) -> None:
    """The known metrics present in ``metrics`` as a two-column table (nothing when none are)."""
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
