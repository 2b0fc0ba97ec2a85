"""`pathseg demo --ambiguous`: the CIMD part of the demo runs end to end and lands in the report."""

from __future__ import annotations

import json
from pathlib import Path

from tests.report.test_report_paths import references, resolve
from tests.test_bad_input import pathseg


def test_demo_with_ambiguous_segmentation_reports_the_cimd_samples(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "2", "--num", "16", "--size", "64", "--ambiguous", "2"]
    result = pathseg(*args)
    assert result.code == 0, result.stderr
    cimd = out / "ambiguous"
    metrics = json.loads((cimd / "test" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["settings"]["samples"] == 8  # 16 // 8 test tiles
    assert (cimd / "report.html").is_file()
    report = out / "run" / "report.html"
    page = report.read_text()
    assert "Ambiguous segmentation" in page and f"{metrics['ged']:.4f}" in page
    panels = [url for url in references(report).images if url.endswith("_panel.png")]
    assert len(panels) == 2
    for url in references(report).images:
        assert resolve(report, url).is_file(), url
