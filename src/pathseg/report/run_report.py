"""The HTML report of a training run: what was trained, how it learned, how well it segments."""

from __future__ import annotations

import csv
import html
import json
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


def build_run_report(
    run_dir: Path,
    title: str | None = None,
    extra_sections: list[tuple[str, str]] | None = None,
    monitor: str = "dice",
) -> Path:
    """Write ``run_dir/report.html`` from the files the run left behind."""
    sections: list[tuple[str, str]] = list(extra_sections or [])
    test_metrics = run_dir / "test" / "metrics.json"
    if test_metrics.exists():
        metrics = json.loads(test_metrics.read_text())
        sections.append(("Test metrics (whole images)", table(metrics_rows(metrics))))
    curve = learning_curves(run_dir / "metrics.jsonl", run_dir / "figures" / "learning_curve.png", monitor)
    if curve:
        caption = "training loss and validation " + monitor_label(monitor)
        sections.append(("Learning curve", image_tag(curve, run_dir, caption)))
    per_image = run_dir / "test" / "per_image.csv"
    rows: list[dict] = []
    if per_image.exists():
        with open(per_image) as handle:
            rows = list(csv.DictReader(handle))
        columns = [
            c for c in ("name", "dice", "iou", "object_f1", "object_dice", "hd95") if rows and c in rows[0]
        ]
        rows = sorted(rows, key=lambda r: float(r.get("dice") or 0))
        for row in rows:
            for key in columns[1:]:
                row[key] = float(row[key]) if row.get(key) not in (None, "", "nan") else float("nan")
        sections.append(("Per image (worst first)", table(rows, columns)))
    overlays = {p.stem: p for p in sorted((run_dir / "test" / "overlays").glob("*.png"))}
    if overlays:
        # worst first, as in the table above; images the table does not list follow by name
        dice: dict[str, float | None] = {}
        for row in rows:
            name = row.get("name") or ""
            name = name if name in overlays else Path(name).stem
            score = row.get("dice")
            dice[name] = score if isinstance(score, float) and score == score else None
        order = [name for name in dice if name in overlays] + [n for n in overlays if n not in dice]
        figures = []
        for name in order[:8]:
            score = dice.get(name)
            caption = name if score is None else f"{name} (dice {score:.3f})"
            figures.append(image_tag(overlays[name], run_dir, caption))
        body = "<p class=note>each panel: image | ground truth | prediction</p>"
        sections.append(("Predictions", body + f"<div class=gallery>{''.join(figures)}</div>"))
    config_file = run_dir / "config.yaml"
    if config_file.exists():
        config = yaml.safe_load(config_file.read_text())
        sections.append(
            ("Configuration", f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>")
        )
    return write_report(run_dir / "report.html", title or f"pathseg run {run_dir.name}", sections)
