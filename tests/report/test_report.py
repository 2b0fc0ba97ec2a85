import json
from pathlib import Path

import numpy as np

from pathseg.report.figures import overlay, prediction_panel
from pathseg.report.run_report import build_run_report


def test_overlay_colours_only_labelled_pixels():
    image = np.full((10, 10, 3), 200, np.uint8)
    labels = np.zeros((10, 10), np.int64)
    labels[2:8, 2:8] = 1
    out = overlay(image, labels, [(0, 0, 0), (0, 255, 0)], alpha=0.5)
    assert (out[0, 0] == image[0, 0]).all()  # background untouched
    assert out[4, 4, 1] > out[4, 4, 0]  # inside: tinted green
    panel = prediction_panel(image, labels, labels, [(0, 0, 0), (0, 255, 0)])
    assert panel.shape == (10, 3 * 10 + 2 * 6, 3)


def test_run_report_has_curves_metrics_and_config(tmp_path: Path):
    lines = [{"split": "train", "step": s, "loss": 1.0 / s} for s in range(1, 11)]
    lines += [{"split": "val", "step": 10, "dice": 0.8}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "metrics.json").write_text(json.dumps({"dice": 0.75, "hd95": 3.5}))
    (tmp_path / "config.yaml").write_text("train:\n  steps: 10\n")
    html = build_run_report(tmp_path).read_text()
    assert (tmp_path / "figures" / "learning_curve.png").stat().st_size > 1000
    assert "learning_curve.png" in html and "0.7500" in html and "steps: 10" in html


def test_image_grid_places_tiles_row_by_row_with_gaps():
    import numpy as np
    import pytest

    from pathseg.report.figures import image_grid

    tiles = [np.full((4, 5, 3), value, np.uint8) for value in (10, 20, 30)]
    grid = image_grid(tiles, columns=2, gap=1)
    assert grid.shape == (4 * 2 + 1, 5 * 2 + 1, 3)
    assert (grid[:4, :5] == 10).all() and (grid[:4, 6:] == 20).all() and (grid[5:, :5] == 30).all()
    assert (grid[4] == 255).all() and (grid[5:, 6:] == 255).all()  # gap row and the empty last cell
    with pytest.raises(ValueError, match="same size"):
        image_grid([tiles[0], np.zeros((3, 5, 3), np.uint8)])
