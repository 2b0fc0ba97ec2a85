"""`pathseg ambiguous train` -> `pathseg ambiguous sample` end to end, through the real CLI entry point,
on 8 synthetic 32 px tiles with 4 annotators and a tiny CIMD network (a few seconds per run)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pathseg.data.io import read_label_image
from pathseg.metrics.ambiguity import ged
from tests.conftest import shared_data_or_skip
from tests.test_bad_input import pathseg

TINY = [
    "--set",
    "model.base_channels=8",
    "--set",
    "model.channel_mults=[1,2]",
    "--set",
    "model.encoder_filters=[8,16]",
    "--set",
    "model.latent_dim=2",
    "--set",
    "diffusion.num_steps=50",
    "--set",
    "validation.steps=2",
    "--set",
    "validation.samples=2",
    "--set",
    "sample.steps=3",
    "--set",
    "sample.samples=3",
    "--set",
    "data.val_fraction=0.25",
    "--set",
    "train.eval_every=2",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "train.warmup_steps=1",
    "--set",
    "train.ema_decay=0.9",
    "--set",
    "train.threads=1",
]
ANNOTATORS = ("dilate", "drop_small", "erode", "merge")


def run_main(args: list[str]) -> tuple[int, str]:
    """The real entry point in-process: (exit status, what it printed on stderr)."""
    result = pathseg(*args)
    return result.code, result.stderr


def train_args(data: Path, out: Path, steps: int = 4) -> list[str]:
    return [
        "ambiguous",
        "train",
        "--train",
        str(data),
        "--crop-size",
        "16",
        "--steps",
        str(steps),
        "-b",
        "2",
        "--seed",
        "0",
        "--out",
        str(out),
        *TINY,
    ]


def ok(args: list[str]) -> None:
    code, err = run_main(args)
    assert code == 0, err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from pathseg.data.synthetic import SynthConfig, write_multi_annotator_dataset

    return write_multi_annotator_dataset(
        tmp_path_factory.mktemp("multi") / "data", 8, seed=0, config=SynthConfig(size=32)
    )


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cimd"
    ok(train_args(data, out))
    return out


@pytest.fixture(scope="module")
def sampled(run: Path, data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples") / "s"
    ok(["ambiguous", "sample", str(run), str(data), "--out", str(out), "--seed", "7"])
    return out


def read_masks(folder: Path, count: int) -> np.ndarray:
    return np.stack([read_label_image(folder / f"sample_{i}.png") for i in range(count)])


def test_train_writes_a_run_folder_that_rebuilds_the_network(run: Path) -> None:
    from pathseg.methods.ambiguous.sample import load_ambiguous_run, run_class_map

    for name in ("config.yaml", "environment.json", "splits.json", "metrics.jsonl", "model.safetensors"):
        assert (run / name).is_file(), name
    info = json.loads((run / "inference.json").read_text())
    assert [c["name"] for c in info["classes"]] == ["background", "foreground"]
    assert info["classes"][1]["stored_values"] == [1, 255]
    assert (info["scale"], info["crop_size"], info["kl_weight"], info["faithful"]) == (1.0, 16, 1.0, False)
    assert info["sampler"] == {"method": "ddim", "steps": 3, "eta": 0.0, "samples": 3}
    # val_fraction 0.25 of 8 images: 2 whole images held out, none on both sides.
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["val_images"]) == 2 and not set(splits["val_images"]) & set(splits["train_images"])
    assert sorted(splits["train_images"] + splits["val_images"]) == [f"synth_{i:05d}" for i in range(8)]
    # Validation ran at steps 2 and 4 and logged GED; the final weights are the best step's EMA.
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4] and all(0 <= r["ged"] <= 2 for r in val)

    model, config = load_ambiguous_run(run)
    assert model.latent_dim == 2 and model.config["encoder_filters"] == [8, 16] and not model.faithful
    assert config.train.steps == 4 and run_class_map(run).names == ("background", "foreground")
    stored = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())


def test_sampling_writes_masks_maps_panel_and_metrics(sampled: Path, data: Path) -> None:
    rows = list(csv.DictReader((sampled / "per_image.csv").open()))
    assert [r["name"] for r in rows] == [f"synth_{i:05d}" for i in range(8)]
    for row in rows:
        folder = sampled / row["name"]
        masks = read_masks(folder, 3)
        assert not (folder / "sample_3.png").exists()  # N = 3 (the run's sample.samples)
        assert masks.shape == (3, 32, 32) and set(np.unique(masks)) <= {0, 1}
        # mean.png is the share of samples voting foreground, 0..255
        mean = np.asarray(Image.open(folder / "mean.png"))
        assert np.array_equal(mean, np.round((masks > 0).mean(axis=0) * 255).astype(np.uint8))
        for name in ("variance.png", "entropy.png"):
            assert np.asarray(Image.open(folder / name)).shape == (32, 32, 3)
        assert (sampled / f"{row['name']}_panel.png").is_file()
        # The per-image GED, recomputed from the written masks and the annotators' files.
        truth = np.stack([read_label_image(data / "masks" / a / f"{row['name']}.png") for a in ANNOTATORS])
        assert float(row["ged"]) == pytest.approx(ged(masks > 0, truth > 0)["ged"], abs=1e-9)
        assert int(row["annotators"]) == 4 and float(row["seconds"]) > 0
    metrics = json.loads((sampled / "metrics.json").read_text())
    assert metrics["num_images"] == 8
    assert metrics["ged"] == pytest.approx(np.mean([float(r["ged"]) for r in rows]))
    for key in ("hm_iou", "ci", "s_c", "d_max", "d_a"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["settings"]["samples"] == 3 and metrics["settings"]["seed"] == 7


def test_the_same_seed_gives_the_same_masks(run: Path, data: Path, sampled: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    ok(["ambiguous", "sample", str(run), str(data), "--out", str(again), "--seed", "7"])
    # A plain folder of images: samples and maps, but nothing to score.
    ok(["ambiguous", "sample", str(run), str(data / "images"), "--out", str(other), "--seed", "8"])
    assert not (other / "metrics.json").exists()
    header = (other / "per_image.csv").read_text().splitlines()[0]
    assert header == "name,seconds"
    differs = False
    for i in range(8):
        name = f"synth_{i:05d}"
        first = read_masks(sampled / name, 3)
        assert np.array_equal(first, read_masks(again / name, 3)), name
        differs |= not np.array_equal(first, read_masks(other / name, 3))
    assert differs  # another seed draws other masks


def test_a_run_with_test_images_reports_their_metrics_and_panels_worst_first(
    data: Path, tmp_path: Path
) -> None:
    from tests.report.test_report_paths import references, resolve

    out = tmp_path / "tested"
    ok([*train_args(data, out, steps=2), "--test", str(data)])
    rows = list(csv.DictReader((out / "test" / "per_image.csv").open()))
    worst_first = [r["name"] for r in sorted(rows, key=lambda r: -float(r["ged"]))]
    report = out / "report.html"
    page = report.read_text()
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert f"{metrics['ged']:.4f}" in page and "hm_iou" in page
    panels = [Path(url).name for url in references(report).images if url.endswith("_panel.png")]
    assert panels == [f"{name}_panel.png" for name in worst_first]
    for url in references(report).images:  # the learning curve and every panel open
        assert resolve(report, url).is_file(), url


def last_ema(run_dir: Path) -> dict[str, torch.Tensor]:
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    return load_file(str(run_dir / "checkpoints" / last["dir"] / "ema.safetensors"))


def test_resume_trains_on_to_the_new_step_count(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cimd"
    shutil.copytree(run, copy)
    before = last_ema(copy)
    ok(["ambiguous", "train", "--resume", "--out", str(copy), "--steps", "6"])
    assert json.loads((copy / "checkpoints" / "last.json").read_text())["step"] == 6
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 6
    assert {r["split"] for r in records if r["step"] == 6} == {"train", "val"}
    after = last_ema(copy)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # Changing anything but the step count is refused in one line.
    code, err = run_main(["ambiguous", "train", "--resume", "--out", str(copy), "--crop-size", "8"])
    assert code == 2 and "data.crop_size" in err and len(err.strip().splitlines()) == 1


def test_faithful_mode_trains_only_the_denoiser(data: Path, tmp_path: Path) -> None:
    from pathseg.methods.ambiguous.config import class_map_for
    from pathseg.methods.ambiguous.sample import load_ambiguous_run
    from pathseg.methods.ambiguous.train import build_network

    out = tmp_path / "faithful"
    ok([*train_args(data, out, steps=2), "--set", "faithful=true"])
    info = json.loads((out / "inference.json").read_text())
    assert info["faithful"] is True and info["kl_weight"] == 1e-3
    model, config = load_ambiguous_run(out)
    initial = build_network(config, class_map_for(config, "pathseg")).state_dict()
    trained = model.state_dict()
    # The release never optimises prior and posterior: they keep their initial weights; the
    # denoiser trains.
    frozen = [k for k in trained if k.startswith(("prior_net.", "posterior_net."))]
    assert frozen and all(torch.equal(initial[k], trained[k]) for k in frozen)
    assert any(not torch.equal(initial[k], v) for k, v in trained.items() if k.startswith("denoiser."))
    samples = tmp_path / "s"
    ok(["ambiguous", "sample", str(out), str(data / "images"), "--out", str(samples), "--samples", "2"])
    assert (samples / "synth_00000" / "sample_1.png").is_file()


def _resized_mask(data: Path) -> Path:
    bad = data / "masks" / "erode" / "synth_00003.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(bad)
    return bad


def _stray_value(data: Path) -> Path:
    bad = data / "masks" / "merge" / "synth_00005.png"
    mask = np.zeros((32, 32), np.uint8)
    mask[3, 4] = 7
    Image.fromarray(mask).save(bad)
    return bad


def _one_annotator(data: Path) -> Path:
    for name in ANNOTATORS[1:]:
        shutil.rmtree(data / "masks" / name)
    return data


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (_resized_mask, "mask is 40x40 but image synth_00003.png is 32x32"),
        (_stray_value, "not in the class map"),
        (_one_annotator, "ambiguity needs masks from at least 2"),
    ],
)
def test_a_bad_dataset_ends_in_one_line_naming_the_file(data: Path, tmp_path: Path, spoil, problem) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    named = spoil(copy)
    code, err = run_main(train_args(copy, tmp_path / "run"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(named) in lines[0] and problem in lines[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_draw_masks_returns_native_size_masks_at_any_scale() -> None:
    """An odd-sized image at scale 0.5 (15x11 px, padded to 16x12 for the 2-level denoiser)
    comes back as masks of the native 30x22 size, reproducibly for one generator seed."""
    from pathseg.methods.ambiguous import CIMDNetwork
    from pathseg.methods.ambiguous.config import AmbiguousConfig
    from pathseg.methods.ambiguous.sample import draw_masks, make_sampler

    torch.manual_seed(0)
    model = CIMDNetwork(latent_dim=2, base_channels=8, channel_mults=(1, 2), encoder_filters=(8, 16)).eval()
    config = AmbiguousConfig.model_validate({"diffusion": {"num_steps": 50}})
    sampler = make_sampler(config, "ddim", 2)
    image = np.random.default_rng(0).integers(0, 256, (22, 30, 3), dtype=np.uint8)
    first = draw_masks(model, image, 0.5, sampler, 3, torch.Generator().manual_seed(1), batch_size=2)
    again = draw_masks(model, image, 0.5, sampler, 3, torch.Generator().manual_seed(1), batch_size=2)
    assert first.shape == (3, 22, 30) and first.dtype == np.uint8 and set(np.unique(first)) <= {0, 1}
    assert np.array_equal(first, again)
    # Nearest upsampling by 2: every 2x2 block of the native mask holds one value.
    assert np.array_equal(first[:, ::2, ::2].repeat(2, 1).repeat(2, 2), first)


def test_scored_annotators_drops_missing_ones_and_ignores_unlabelled_pixels() -> None:
    from pathseg.methods.ambiguous.sample import scored_annotators

    masks = np.zeros((2, 2, 3), np.int64)  # (H, W, M)
    masks[..., 0] = [[1, 0], [0, 255]]  # annotator 0: foreground at (0, 0), (1, 1) unlabelled
    masks[..., 1] = 255  # annotator 1 drew nothing for this image: left out
    masks[..., 2] = [[1, 1], [0, 0]]
    truth, ignore = scored_annotators(masks, 255)
    assert truth.tolist() == [[[True, False], [False, False]], [[True, True], [False, False]]]
    assert ignore.tolist() == [[False, False], [False, True]]


@pytest.mark.shared_data
def test_bubil_runs_with_its_own_class_map(tmp_path: Path) -> None:
    """BU-BIL draws cells black (0) on white: without --classes the bubil layout must read 0 as
    the cell class, not as background (the binary default would silently invert every mask)."""
    source = shared_data_or_skip("bubil", "Dataset1")
    subset = tmp_path / "bubil"
    (subset / "RawImages").mkdir(parents=True)
    stems = ("B01", "B02", "B03")
    for stem in stems:
        shutil.copy(source / "RawImages" / f"{stem}.png", subset / "RawImages")
    for person in ("Person1_ImageJ", "Person2_ImageJ"):
        folder = subset / "ExpertsAnnotations" / person
        folder.mkdir(parents=True)
        for stem in stems:
            shutil.copy(source / "ExpertsAnnotations" / person / f"seg_{stem}.png", folder)
    out = tmp_path / "run"
    args = train_args(subset, out, steps=2)
    args[args.index("--crop-size") + 1] = "64"
    ok([*args, "--scale", "0.125", "--set", "data.val_fraction=0.34"])
    info = json.loads((out / "inference.json").read_text())
    assert info["layout"] == "bubil"
    assert [(c["name"], c["stored_values"]) for c in info["classes"]] == [
        ("background", [255, 1]),
        ("cell", [0]),
    ]
    samples = tmp_path / "samples"
    ok(["ambiguous", "sample", str(out), str(subset), "--out", str(samples), "--samples", "2"])
    rows = list(csv.DictReader((samples / "per_image.csv").open()))
    assert [r["name"] for r in rows] == list(stems) and all(r["annotators"] == "2" for r in rows)
    assert read_label_image(samples / "B01" / "sample_0.png").shape == (811, 1024)
