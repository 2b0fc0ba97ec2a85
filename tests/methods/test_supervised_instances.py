"""`pathseg train --instances boundary` end to end: boundary-aware training, instance maps from
evaluate and predict, and the run metadata inference needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pathseg.cli import app
from pathseg.config import SupervisedConfig, resolve_config
from pathseg.errors import ConfigError
from pathseg.methods import supervised

runner = CliRunner()


@pytest.fixture(scope="module")
def boundary_run(synth_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("boundary") / "run"
    args = [
        "train",
        "--train",
        str(synth_root / "train"),
        "--test",
        str(synth_root / "test"),
        "--classes",
        "background=0,gland=1",
        "--model",
        "unet_small",
        "--crop-size",
        "64",
        "--steps",
        "6",
        "-b",
        "2",
        "--instances",
        "boundary",
        "--mpp",
        "0.5",
        "--scale",
        "0.5",
        "--out",
        str(out),
        "--set",
        "model.base_channels=8",
        "--set",
        "instances.min_area=4",
        "--set",
        "train.threads=1",
        "--set",
        "data.val_fraction=0.25",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_run_records_classes_scale_mpp_and_objects(boundary_run: Path) -> None:
    info = json.loads((boundary_run / "inference.json").read_text())
    assert [c["name"] for c in info["classes"]] == ["background", "gland"]
    assert info["classes"][1]["stored_values"] == [1]
    assert info["output_channels"] == 3
    assert info["scale"] == 0.5 and info["image_mpp"] == 0.5 and info["model_mpp"] == 1.0
    assert info["instances"]["method"] == "boundary"
    model, _, class_map = supervised.load_run(boundary_run)
    assert model.config["num_classes"] == 3 and len(class_map.names) == 2
    metrics = json.loads((boundary_run / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["object_f1"] <= 1.0 and "dice" in metrics


def test_predict_writes_consistent_class_and_instance_maps(boundary_run: Path, synth_root: Path, tmp_path):
    images = synth_root / "test" / "images"
    result = runner.invoke(app, ["predict", str(boundary_run), str(images), "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    for image_path in sorted(images.iterdir()):
        mask = np.array(Image.open(tmp_path / "p" / "masks" / image_path.name))
        instance_file = Image.open(tmp_path / "p" / "instances" / image_path.name)
        assert instance_file.mode.startswith("I")  # 16-bit grey, not a palette or 8-bit image
        instances = np.array(instance_file)
        assert mask.shape == instances.shape == np.array(Image.open(image_path)).shape[:2]
        assert set(np.unique(mask).tolist()) <= {0, 1}
        np.testing.assert_array_equal(mask > 0, instances > 0)
        ids = np.unique(instances[instances > 0])
        np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))


def test_evaluate_uses_the_run_instance_settings(boundary_run: Path, synth_root: Path, tmp_path) -> None:
    out = tmp_path / "ev"
    result = runner.invoke(
        app, ["evaluate", str(boundary_run), "--data", str(synth_root / "test"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    again = json.loads((out / "metrics.json").read_text())
    during = json.loads((boundary_run / "test" / "metrics.json").read_text())
    assert again["object_f1"] == pytest.approx(during["object_f1"])
    assert again["dice"] == pytest.approx(during["dice"])


def test_boundary_needs_a_single_object_class(tmp_path: Path) -> None:
    cfg = resolve_config(
        SupervisedConfig,
        None,
        ['data.classes={"bg": 0, "a": 1, "b": 2}', "instances.method=boundary", f"output={tmp_path}"],
    )
    with pytest.raises(ConfigError, match="one class"):
        supervised.class_map_from(cfg)
