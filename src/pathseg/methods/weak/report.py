"""The weak-supervision run report: how the classifier learned, how good its pseudo masks are, and how
the segmenter trained on them does on pixel-labelled test images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathseg.methods.weak.config import WeakConfig, stage_dirs
from pathseg.report.figures import learning_curves, monitor_label
from pathseg.report.html import image_tag, table, write_report


def _score_rows(scores: dict[str, dict[str, float]], first: str) -> tuple[list[dict], list[str]]:
    rows = [{first: name, **values} for name, values in scores.items() if isinstance(values, dict)]
    columns = [first, *dict.fromkeys(k for row in rows for k in row if k != first)]
    return rows, columns


def build_weak_report(config: WeakConfig) -> Path:
    """Write ``<run>/report.html`` from what the three stages left behind (missing parts are skipped)."""
    dirs = stage_dirs(config)
    root = dirs["root"]
    sections: list[tuple[str, str]] = [
        (
            "What this is",
            "<p>Segmentation learned from patch-level labels (MLPS): a multi-label classifier with "
            "Progressive Dropout Attention, Grad-CAMs of several layers turned into pseudo masks, and a "
            f"segmenter trained on them. Classes: {', '.join(config.data.classes)}.</p>",
        )
    ]
    summary_file = root / "summary.json"
    if summary_file.exists():
        summary: dict[str, Any] = json.loads(summary_file.read_text())
        arms = {
            name: summary[name] for name in ("test", "test_ungated") if isinstance(summary.get(name), dict)
        }
        rows, columns = _score_rows(arms, "segmenter")
        note = f"<p class=note>gate: {summary.get('gate', '?')}; pixels pooled over all test images</p>"
        sections.append(("Segmenter on the test images", note + table(rows, columns)))
        if isinstance(summary.get("test_cams"), dict):
            rows, columns = _score_rows(summary["test_cams"], "layer")
            sections.append(("CAM pseudo masks on the test images (predicted labels)", table(rows, columns)))
    quality_file = root / "cam_quality.json"
    if quality_file.exists():
        rows, columns = _score_rows(json.loads(quality_file.read_text()), "layer")
        sections.append(("Pseudo masks on the training patches (true labels)", table(rows, columns)))
    cams = root / "figures" / "cams.png"
    if cams.exists():
        sections.append(("Class activation maps", image_tag(cams, root, "patches, CAMs and pseudo masks")))
    curves = []
    for stage, monitor in (
        ("classifier", config.classifier.train.monitor),
        ("segmenter", config.segmenter.train.monitor),
    ):
        png = learning_curves(dirs[stage] / "metrics.jsonl", root / "figures" / f"{stage}_curve.png", monitor)
        if png:
            caption = f"{stage}: training loss and validation {monitor_label(monitor)}"
            curves.append(image_tag(png, root, caption))
    if curves:
        sections.append(("Learning curves", f"<div class=gallery>{''.join(curves)}</div>"))
    overlays = sorted((root / "test" / "overlays").glob("*.png"))[:6]
    if overlays:
        figures = "".join(image_tag(p, root, p.stem) for p in overlays)
        body = "<p class=note>each panel: image | ground truth | prediction (gated)</p>"
        sections.append(("Predictions", body + f"<div class=gallery>{figures}</div>"))
    return write_report(root / "report.html", f"pathseg weak supervision: {root.name}", sections)
