"""The HTML report of a training run: what was trained, how it learned, how well it segments."""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from pathseg.report.figures import learning_curves, monitor_label
from pathseg.report.html import image_tag, table, write_report

HEADLINE = [
    "dice",
    "iou",
    "global_dice",
    "pixel_accuracy",
    "object_f1",
    "object_dice",
    "hd95",
    "object_hausdorff",
]


def metrics_rows(metrics: dict[str, float], keys: list[str] | None = None) -> list[dict]:
    keys = keys or [k for k in HEADLINE if k in metrics]
    return [{"metric": k, "value": metrics[k]} for k in keys if k in metrics]


@dataclass(frozen=True)
class ReportLayout:
    """Which test metrics a report shows and how it orders images: a segmentation run's by
    Dice (worst first) with its overlays; other kinds of run name their own."""

    headline: tuple[str, ...] = tuple(HEADLINE)
    per_image: tuple[str, ...] = ("dice", "iou", "object_f1", "object_dice", "hd95")
    rank_by: str = "dice"
    higher_is_better: bool = True
    figures: str = "overlays/*.png"  # under <run>/test; the figure's stem less suffix names the image
    figure_suffix: str = ""
    figure_note: str = "each panel: image | ground truth | prediction"


def build_run_report(
    run_dir: Path,
    title: str | None = None,
    extra_sections: list[tuple[str, str]] | None = None,
    monitor: str = "dice",
    layout: ReportLayout | None = None,
) -> Path:
    """Write ``run_dir/report.html`` from the files the run left behind."""
    layout = layout or ReportLayout()
    sections: list[tuple[str, str]] = list(extra_sections or [])
    test_metrics = run_dir / "test" / "metrics.json"
    if test_metrics.exists():
        metrics = json.loads(test_metrics.read_text())
        keys = [k for k in layout.headline if isinstance(metrics.get(k), int | float)]
        sections.append(("Test metrics (whole images)", table(metrics_rows(metrics, keys))))
    curve = learning_curves(run_dir / "metrics.jsonl", run_dir / "figures" / "learning_curve.png", monitor)
    if curve:
        caption = "training loss and validation " + monitor_label(monitor)
        sections.append(("Learning curve", image_tag(curve, run_dir, caption)))
    per_image = run_dir / "test" / "per_image.csv"
    rows: list[dict] = []
    if per_image.exists():
        with open(per_image) as handle:
            rows = list(csv.DictReader(handle))
        columns = [c for c in ("name", *layout.per_image) if rows and c in rows[0]]
        for row in rows:
            for key in columns[1:]:
                row[key] = float(row[key]) if row.get(key) not in (None, "", "nan") else float("nan")
        rank = layout.rank_by

        def worst_first(row: dict) -> float:
            score = row.get(rank)
            if not isinstance(score, float) or score != score:
                return -math.inf  # unscored images lead: they need a look most
            return score if layout.higher_is_better else -score

        rows = sorted(rows, key=worst_first)
        sections.append(("Per image (worst first)", table(rows, columns)))
    found = sorted((run_dir / "test").glob(layout.figures))
    panels = {p.stem.removesuffix(layout.figure_suffix): p for p in found}
    if panels:
        # worst first, as in the table above; images the table does not list follow by name
        scores: dict[str, float | None] = {}
        for row in rows:
            name = row.get("name") or ""
            name = name if name in panels else Path(name).stem
            score = row.get(layout.rank_by)
            scores[name] = score if isinstance(score, float) and score == score else None
        order = [name for name in scores if name in panels] + [n for n in panels if n not in scores]
        figures = []
        for name in order[:8]:
            score = scores.get(name)
            caption = name if score is None else f"{name} ({layout.rank_by} {score:.3f})"
            figures.append(image_tag(panels[name], run_dir, caption))
        body = f"<p class=note>{layout.figure_note}</p>"
        sections.append(("Predictions", body + f"<div class=gallery>{''.join(figures)}</div>"))
    config_file = run_dir / "config.yaml"
    if config_file.exists():
        config = yaml.safe_load(config_file.read_text())
        sections.append(
            ("Configuration", f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>")
        )
    return write_report(run_dir / "report.html", title or f"pathseg run {run_dir.name}", sections)
