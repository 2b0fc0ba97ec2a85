"""Whole-slide prediction as a user runs it: a model from `pathseg train`, slides in, four outputs out.

The GeoJSON is checked against the OME-TIFF mask by rasterising it back; a prediction killed with
SIGKILL half way resumes to the identical mask; bad slides end in one line naming the file.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseg.data.annotations import rasterize, read_annotations
from pathseg.slides.ometiff import read_label_ome_tiff_classes
from tests.conftest import shared_data_or_skip
from tests.test_cli import ENV, _run_main, one_line_error, run_cli, tiny_train_args

MODEL_MPP = 2.0  # trained with --mpp 1.0 --scale 0.5: coarse, so the tests' slides stay small


@pytest.fixture(scope="module")
def slide_run(synth_root: Path, tmp_path_factory) -> Path:
    """A tiny two-class model trained by `pathseg train`, recording the µm/px it works at."""
    out = tmp_path_factory.mktemp("slide_run") / "run"
    args = [*tiny_train_args(synth_root, out, steps=4), "--mpp", "1.0", "--scale", "0.5"]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "inference.json").read_text())
    assert info["model_mpp"] == pytest.approx(MODEL_MPP)
    return out


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory) -> Path:
    from pathseg.slides.synthetic import write_synthetic_slide

    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "synthetic.tif", 2400, mpp=0.5, seed=3)


def mask_level0(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


def check_outputs(out: Path, stem: str, slide_size: tuple[int, int]) -> None:
    mask_path = out / f"{stem}.ome.tif"
    with tifffile.TiffFile(mask_path) as tif:
        assert tif.is_ome and len(tif.series[0].levels) >= 2
        labels = tif.series[0].levels[0].asarray()
    assert read_label_ome_tiff_classes(mask_path) == ["background", "gland"]
    downsample = MODEL_MPP / json.loads((out / f"{stem}.json").read_text())["slide_mpp"]
    width, height = slide_size
    assert labels.shape == (int(np.ceil(height / downsample)), int(np.ceil(width / downsample)))
    assert set(np.unique(labels)) <= {0, 1, 255}
    # The QuPath GeoJSON, drawn back at the mask's resolution, is the mask's gland class.
    features = json.loads((out / f"{stem}.geojson").read_text())["features"]
    assert all(f["properties"]["classification"]["name"] == "gland" for f in features)
    gland = labels == 1
    if features:
        annotations = read_annotations(out / f"{stem}.geojson")
        box = (0, 0, round(labels.shape[1] * downsample), round(labels.shape[0] * downsample))
        drawn = rasterize(annotations, [1] * len(annotations), box, downsample, fill=0)
        drawn = drawn[: labels.shape[0], : labels.shape[1]] == 1
        iou = (drawn & gland).sum() / max((drawn | gland).sum(), 1)
        assert iou >= 0.99, iou
    # Areas per class add up to the analysed pixels.
    with open(out / f"{stem}.csv") as handle:
        rows = list(csv.DictReader(handle))
    counts = {row["class"]: int(row["pixels"]) for row in rows}
    assert counts["gland"] == gland.sum() and counts["background"] == (labels == 0).sum()
    thumb = np.asarray(Image.open(out / f"{stem}.thumbnail.png"))
    assert thumb.ndim == 3 and max(thumb.shape[:2]) <= 2048
    assert (out / f"{stem}.tissue.png").exists() and (out / f"{stem}.tissue.geojson").exists()
    assert not (out / f"{stem}.partial").exists()  # the work folder goes once outputs are written


@pytest.mark.shared_data
@pytest.mark.slow
def test_predict_both_shared_slides_writes_the_four_outputs(slide_run: Path, tmp_path: Path) -> None:
    cmu = shared_data_or_skip("wsi", "cmu-1-small-region.svs")
    tcga = shared_data_or_skip("wsi", "tcga-cr-7395-01a-01-ts1.svs")
    out = tmp_path / "out"
    # The TCGA slide records no µm/px: --mpp fills it in (the CMU slide keeps its own 0.499).
    result = run_cli(["predict", str(slide_run), str(cmu), str(tcga), "--out", str(out), "--mpp", "0.25"])
    assert result.returncode == 0, result.stderr[-3000:]
    check_outputs(out, "cmu-1-small-region", (2220, 2967))
    check_outputs(out, "tcga-cr-7395-01a-01-ts1", (4443, 3567))
    assert json.loads((out / "cmu-1-small-region.json").read_text())["slide_mpp"] == pytest.approx(0.499)


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from pathseg.methods.supervised import load_run
    from pathseg.slides.predict import SlideModel, SlideSettings, predict_slide
    from pathseg.slides.reader import open_slide

    run, slide_path, out, kill_after = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    model, cfg, class_map = load_run(run)
    calls = 0
    forward = model.forward

    def dying_forward(x):
        global calls
        calls += 1
        if kill_after and calls > kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # as hard as a crash or an out-of-memory kill
        return forward(x)

    model.forward = dying_forward
    network = SlideModel(model, class_map.names, class_map.palette(), 2.0, cfg.data.crop_size, 0.25)
    settings = SlideSettings(batch_size=4, workers=0)
    with open_slide(slide_path) as slide:
        predict_slide(slide, network, out, settings, resume="--resume" in sys.argv, show_progress=False)
    """
)


@pytest.mark.slow
def test_slide_prediction_killed_half_way_resumes_to_the_identical_mask(
    slide_run: Path, synthetic_slide: Path, tmp_path: Path
) -> None:
    def predict(out: Path, kill_after: int, *extra: str) -> subprocess.CompletedProcess:
        args = [
            sys.executable,
            "-c",
            _KILLER,
            str(slide_run),
            str(synthetic_slide),
            str(out),
            str(kill_after),
        ]
        return subprocess.run([*args, *extra], env=ENV, capture_output=True, text=True, timeout=600)

    straight = predict(tmp_path / "straight", 0)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = predict(tmp_path / "killed", 5)
    assert killed.returncode == -9
    state = tmp_path / "killed" / "synthetic.partial" / "state.npz"
    with np.load(state) as saved:
        assert int(saved["next_batch"]) == 5  # five batches were finished and recorded
    # Without --resume the unfinished work is not silently thrown away.
    again = predict(tmp_path / "killed", 0)
    assert again.returncode != 0 and "rerun with --resume" in again.stderr
    resumed = predict(tmp_path / "killed", 0, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = mask_level0(tmp_path / "straight" / "synthetic.ome.tif")
    b = mask_level0(tmp_path / "killed" / "synthetic.ome.tif")
    assert (a == b).all() and (a == 1).any() and (a == 255).any()
    same = json.loads((tmp_path / "straight" / "synthetic.geojson").read_text())
    assert same == json.loads((tmp_path / "killed" / "synthetic.geojson").read_text())


def test_slide_without_mpp_and_corrupt_slide_are_named_and_the_good_one_is_written(
    slide_run: Path, synthetic_slide: Path, tmp_path: Path
) -> None:
    from pathseg.data.io import write_image

    no_mpp = tmp_path / "no_mpp.png"  # a plain image records no µm/px
    write_image(no_mpp, np.full((300, 400, 3), 230, np.uint8))
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00" + bytes(100))
    out = tmp_path / "out"
    result = _run_main(
        ["predict", str(slide_run), str(broken), str(no_mpp), str(synthetic_slide), "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and "Traceback" not in result.output
    assert str(broken) in lines[0] and str(no_mpp) in lines[1] and "--mpp" in lines[1]
    assert (out / "synthetic.ome.tif").exists()


def test_glass_only_slide_and_run_without_mpp_are_one_line(
    slide_run: Path, synth_root, tmp_path: Path
) -> None:
    from pathseg.data.io import write_image

    glass = tmp_path / "glass.png"
    write_image(glass, np.full((600, 600, 3), 242, np.uint8))
    line = one_line_error(
        _run_main(["predict", str(slide_run), str(glass), "--out", str(tmp_path / "o"), "--mpp", "0.5"])
    )
    assert str(glass) in line and "no tissue" in line
    plain = tmp_path / "plain_run"
    done = run_cli(tiny_train_args(synth_root, plain, steps=2))
    assert done.returncode == 0, done.stderr[-2000:]
    line = one_line_error(_run_main(["predict", str(plain), str(glass), "--out", str(tmp_path / "o2")]))
    assert str(plain) in line and "--model-mpp" in line


def tiny_tile_train_args(tiles: Path, out: Path, classes: str, mpp: str) -> list[str]:
    """`pathseg train` on a `data tiles` folder: a few steps, the tiles' µm/px recorded."""
    args = [
        "train",
        "--train",
        str(tiles),
        "--classes",
        classes,
        "--model",
        "unet_small",
        "--crop-size",
        "64",
    ]
    args += ["--steps", "3", "-b", "2", "--mpp", mpp, "--out", str(out)]
    for pair in ("model.base_channels=8", "train.eval_every=3", "data.val_fraction=0.25", "train.threads=1"):
        args += ["--set", pair]
    return [*args, "--set", "data.ignore_values=[255]"]


@pytest.mark.shared_data
@pytest.mark.slow
def test_tiles_from_drawn_polygons_train_then_predict_the_slide(tmp_path: Path) -> None:
    """data tiles (a few regions drawn on the CMU slide) -> train -> predict the whole slide."""
    cmu = shared_data_or_skip("wsi", "cmu-1-small-region.svs")
    drawn = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": name}},
            }
            for name, ring in (
                ("gland", [[900, 1200], [1500, 1200], [1500, 1700], [900, 1700], [900, 1200]]),
                ("background", [[1600, 1200], [2000, 1250], [1950, 1900], [1600, 1800], [1600, 1200]]),
            )
        ],
    }
    geojson = tmp_path / "drawn.geojson"
    geojson.write_text(json.dumps(drawn))
    tiles = tmp_path / "tiles"
    made = run_cli(["data", "tiles", str(cmu), "--annotations", str(geojson), "--mpp", "2.0", "--tile", "64",
                    "--classes", "background=0,gland=1", "--out", str(tiles)])  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    masks = [np.asarray(Image.open(p)) for p in sorted((tiles / "masks").glob("*.png"))]
    assert len(masks) >= 4 and any((m == 255).any() for m in masks)  # unannotated pixels are ignored
    assert any((m == 1).any() for m in masks) and any((m == 0).any() for m in masks)
    run = tmp_path / "run"
    trained = run_cli(tiny_tile_train_args(tiles, run, "background=0,gland=1", "2.0"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = tmp_path / "pred"
    predicted = run_cli(["predict", str(run), str(cmu), "--out", str(out), "--workers", "0"])
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    for suffix in (".ome.tif", ".geojson", ".csv", ".thumbnail.png"):
        assert (out / f"cmu-1-small-region{suffix}").exists()


@pytest.mark.shared_data
@pytest.mark.slow
def test_tiles_from_monuseg_xml_train_then_predict(tmp_path: Path) -> None:
    """data tiles (a MoNuSeg image and its nucleus XML, fully annotated) -> train -> predict."""
    image = shared_data_or_skip("monuseg", "test", "images", "TCGA-2Z-A9J9-01A-01-TS1.webp")
    xml = shared_data_or_skip("monuseg", "test", "annotations", "TCGA-2Z-A9J9-01A-01-TS1.xml")
    tiles = tmp_path / "tiles"
    made = run_cli(["data", "tiles", str(image), "--annotations", str(xml), "--mpp", "0.5",
                    "--slide-mpp", "0.25", "--tile", "128", "--unannotated", "background",
                    "--default-class", "nucleus",
                    "--classes", "background=0,nucleus=1", "--out", str(tiles)])  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    run = tmp_path / "run"
    trained = run_cli(tiny_tile_train_args(tiles, run, "background=0,nucleus=1", "0.5"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = tmp_path / "pred"
    predicted = run_cli(
        ["predict", str(run), str(image), "--out", str(out), "--mpp", "0.25", "--workers", "0"]
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    stem = image.stem
    with tifffile.TiffFile(out / f"{stem}.ome.tif") as tif:
        assert tif.series[0].levels[0].shape == (500, 500)  # 1000 px at 0.25 µm/px, predicted at 0.5
    assert read_label_ome_tiff_classes(out / f"{stem}.ome.tif") == ["background", "nucleus"]


def test_a_full_disk_is_one_line_and_the_finished_work_resumes(
    slide_run: Path, synthetic_slide: Path, tmp_path: Path, monkeypatch
) -> None:
    import errno

    from pathseg.errors import DataError
    from pathseg.methods.supervised import load_run
    from pathseg.slides.predict import SlideModel, SlideSettings, predict_slide
    from pathseg.slides.reader import open_slide

    model, cfg, class_map = load_run(slide_run)
    network = SlideModel(model, class_map.names, class_map.palette(), MODEL_MPP, cfg.data.crop_size)
    settings = SlideSettings(batch_size=4, workers=0)
    real_save, saves = np.save, []

    def filling_save(file, *args, **kwargs):
        saves.append(file)
        if len(saves) > 40:  # the disk fills up part way through the slide
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, *args, **kwargs)

    monkeypatch.setattr(np, "save", filling_save)
    out = tmp_path / "out"
    with open_slide(synthetic_slide) as slide, pytest.raises(DataError) as caught:
        predict_slide(slide, network, out, settings, show_progress=False)
    assert str(out) in str(caught.value) and "disk full" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert (out / "synthetic.partial" / "state.npz").exists()  # finished batches are kept
    monkeypatch.setattr(np, "save", real_save)
    with open_slide(synthetic_slide) as slide:
        predict_slide(slide, network, out, settings, resume=True, show_progress=False)
    assert (out / "synthetic.ome.tif").exists() and not (out / "synthetic.partial").exists()
