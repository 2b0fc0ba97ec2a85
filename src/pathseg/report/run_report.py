"""The HTML report of a training run: what was trained, how it learned, how well it segments."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from pathseg.report.figures import learning_curves
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
        sections.append(
            ("Learning curve", image_tag(curve, run_dir, "training loss and validation " + monitor))
        )
    per_image = run_dir / "test" / "per_image.csv"
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
    overlays = sorted((run_dir / "test" / "overlays").glob("*.png"))
    if overlays:
        body = "<p class=note>image | ground truth | prediction</p>" + "".join(
            image_tag(p, run_dir, p.stem) for p in overlays[:8]
        )
        sections.append(("Predictions", body))
    config_file = run_dir / "config.yaml"
    if config_file.exists():
        config = yaml.safe_load(config_file.read_text())
        sections.append(("Configuration", f"<pre>{yaml.safe_dump(config, sort_keys=False)}</pre>"))
    return write_report(run_dir / "report.html", title or f"pathseg run {run_dir.name}", sections)
