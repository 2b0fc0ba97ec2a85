"""Weak supervision from patch labels (MLPS): the pieces worked by hand, then a tiny run end to end."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pathseg.config import resolve_config
from pathseg.data.classes import ClassMap
from pathseg.data.folders import pair_images_and_masks
from pathseg.data.io import read_image, read_label_image
from pathseg.data.patch_labels import PatchSample, discover_patch_labels, make_patch_label_set
from pathseg.errors import ConfigError
from pathseg.methods import weak
from pathseg.methods.weak import (
    GATE_FILL,
    GatedSegmenter,
    PDASection,
    PooledScores,
    classification_scores,
    pseudo_mask,
    split_patches,
    white_background,
)
from pathseg.models.classifier import pda_attention

# ----------------------------------------------------------------------------- PDA


def test_pda_gamma_schedule() -> None:
    pda = PDASection()  # start_epoch 3, gamma 1.0, decay 0.98, floor 0.65
    assert [pda.gamma(e) for e in range(3)] == [None, None, None]
    values = [pda.gamma(e) for e in range(3, 40)]
    for epoch, value in zip(range(3, 22), values, strict=False):
        assert value == pytest.approx(0.98**epoch)
    # 0.98^21 = 0.654 > 0.65, 0.98^22 = 0.641 <= 0.65: decay stops at the first value at or under the floor
    assert pda.gamma(21) == pytest.approx(0.98**21) and pda.gamma(21) > 0.65
    assert pda.gamma(22) == pytest.approx(0.98**22) and pda.gamma(22) <= 0.65
    assert all(v == pytest.approx(0.98**22) for v in values[19:])
    # strictly decreasing from epoch 3 up to epoch 22
    assert all(a > b for a, b in itertools.pairwise(values[:20]))
    assert PDASection(enabled=False).gamma(10) is None
    custom = PDASection(start_epoch=0, gamma_start=0.9, decay=0.5, floor=0.3)
    assert [custom.gamma(e) for e in range(5)] == pytest.approx([0.9, 0.45, 0.225, 0.225, 0.225])


def test_pda_attention_on_a_hand_made_map() -> None:
    maps = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0]],  # peak 4: at gamma 0.8 values above 3.2 are dropped
            [[-1.0, 0.5], [1.0, 2.0]],  # ReLU, peak 2: values above 1.6 are dropped
        ]
    )[None]
    attention = pda_attention(maps, 0.8)
    assert attention.shape == (1, 1, 2, 2)
    # class 0 keeps [1, 2, 3, 0], class 1 keeps [0, 0.5, 1, 0]; the mean over the 2 classes:
    torch.testing.assert_close(attention[0, 0], torch.tensor([[0.5, 1.25], [2.0, 0.0]]))
    # gamma 1 drops nothing (values equal to the peak stay)
    torch.testing.assert_close(pda_attention(maps, 1.0)[0, 0], torch.tensor([[0.5, 1.25], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="gamma"):
        pda_attention(maps, 0.0)


# ----------------------------------------------------------------------------- pseudo masks


def test_pseudo_mask_normalises_all_classes_jointly() -> None:
    cams = torch.tensor(
        [
            [[10.0, 6.0, 4.0, 0.0]],  # strong class
            [[0.0, 1.0, 2.0, 0.5]],  # weak class: per-class min-max would stretch its 2.0 to 1.0
        ]
    )
    # Joint: class 0 -> [1, .6, .4, 0], class 1 -> [0, .1, .2, .05]; the weak class wins only at x=3.
    np.testing.assert_array_equal(pseudo_mask(cams, [1, 1]), [[0, 0, 0, 1]])
    assert pseudo_mask(cams, [1, 1]).dtype == np.uint8
    # Only the present class can be chosen, wherever the other one is stronger.
    np.testing.assert_array_equal(pseudo_mask(cams, [0, 1]), [[1, 1, 1, 1]])
    np.testing.assert_array_equal(pseudo_mask(cams.numpy(), [1, 0]), [[0, 0, 0, 0]])


def test_pseudo_mask_never_chooses_an_absent_class() -> None:
    # Class 0 is absent but strong; at x=0 and x=3 both present classes sit at the joint minimum.
    # MLPS zeroes absent channels after normalising, so class 0 ties there and wins by index.
    cams = torch.tensor([[[5.0, 5.0, 5.0, 5.0]], [[0.0, 4.0, 1.0, 0.0]], [[0.0, 1.0, 3.0, 0.0]]])
    mask = pseudo_mask(cams, [0, 1, 1])
    np.testing.assert_array_equal(mask, [[1, 1, 2, 1]])
    flat = torch.zeros(3, 2, 2)  # constant CAMs: still only present classes
    assert set(np.unique(pseudo_mask(flat, [0, 0, 1])).tolist()) == {2}


def test_pseudo_mask_background_and_errors() -> None:
    cams = torch.tensor([[[3.0, 0.0], [1.0, 2.0]], [[0.0, 2.0], [2.0, 1.0]]])
    background = np.array([[False, True], [False, False]])
    np.testing.assert_array_equal(pseudo_mask(cams, [1, 1], background), [[0, 255], [1, 0]])
    np.testing.assert_array_equal(pseudo_mask(cams, [1, 1], background, ignore_index=7), [[0, 7], [1, 0]])
    with pytest.raises(ValueError, match="no class present"):
        pseudo_mask(cams, [0, 0])
    with pytest.raises(ValueError, match="labels"):
        pseudo_mask(cams, [1, 1, 1])
    with pytest.raises(ValueError, match="background mask"):
        pseudo_mask(cams, [1, 1], np.zeros((3, 2), bool))


def test_white_background_threshold_and_min_size() -> None:
    image = np.full((20, 20, 3), 60, np.uint8)
    image[0:5, 0:5] = 255  # 25 px of glass: dropped at min_size 50
    image[10:20, 10:20] = 255  # 100 px of glass
    image[10:20, 0:8] = (210, 190, 200)  # 80 px, luma 0.299*210 + 0.587*190 + 0.114*200 = 197.12
    expected_big = np.zeros((20, 20), bool)
    expected_big[10:20, 10:20] = True
    np.testing.assert_array_equal(white_background(image, 200, 50), expected_big)
    pale = np.zeros((20, 20), bool)
    pale[10:20, 0:8] = True
    np.testing.assert_array_equal(white_background(image, 197, 50), expected_big | pale)
    np.testing.assert_array_equal(white_background(image, 198, 50), expected_big)
    small = white_background(image, 200, 1)
    assert small.sum() == 125 and small[0:5, 0:5].all()
    assert not white_background(np.zeros((4, 4, 3), np.uint8)).any()


def test_pooled_scores_against_a_hand_computation() -> None:
    scores = PooledScores(["a", "b", "c"])
    # image 1: truth a a b b b (ignored); prediction a a b (unlabelled) a ...
    scores.update(np.array([[0, 0, 1, 255, 0, 1]]), np.array([[0, 0, 1, 1, 1, 255]]))
    # image 2: four correct a pixels
    scores.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.int64))
    result = scores.scores()
    # a: tp 6, fp 1 (a truth-b pixel) -> 6/7. b: tp 1, fn 2 (one predicted a, one unlabelled) -> 1/3.
    # c appears nowhere and is left out of the mean.
    assert result["iou/a"] == pytest.approx(6 / 7)
    assert result["iou/b"] == pytest.approx(1 / 3)
    assert result["miou"] == pytest.approx((6 / 7 + 1 / 3) / 2)
    assert result["pixel_accuracy"] == pytest.approx(7 / 9)  # 9 labelled truth pixels
    assert result["fwiou"] == pytest.approx(6 / 9 * 6 / 7 + 3 / 9 * 1 / 3)
    assert math.isnan(PooledScores(["a"]).scores()["miou"])


def test_classification_scores_by_hand() -> None:
    probabilities = torch.tensor([[0.9, 0.2, 0.1], [0.6, 0.7, 0.0], [0.1, 0.4, 0.2]])
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]])
    scores = classification_scores(probabilities, labels)
    # a: tp 1, fp 1 -> 2/3; b: tp 1, fn 1 -> 2/3; c: never present nor predicted -> 1
    assert scores["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert scores["exact_match"] == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- gate


class FixedClassifier(nn.Module):
    def __init__(self, probabilities: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.logit(torch.tensor(probabilities)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


class FixedSegmenter(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("out", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out[: x.shape[0]].clone()


# Image 0: class 1 ruled out (p 0.05). Image 1: every class under the threshold, class 1 the most likely.
PROBABILITIES = [[0.9, 0.05, 0.5], [0.02, 0.03, 0.01]]


def segmenter_logits() -> torch.Tensor:
    out = torch.empty(2, 3, 1, 2)
    out[0, :, 0, 0] = torch.tensor([-1.0, -5.0, -2.0])  # all negative, the gated class lowest
    out[0, :, 0, 1] = torch.tensor([0.5, 3.0, 1.0])  # the gated class highest
    out[1, :, 0, 0] = torch.tensor([2.0, -4.0, 1.0])
    out[1, :, 0, 1] = torch.tensor([-3.0, -4.0, -1.0])
    return out


def gated(mode: str, threshold: float = 0.1) -> GatedSegmenter:
    return GatedSegmenter(FixedSegmenter(segmenter_logits()), FixedClassifier(PROBABILITIES), threshold, mode)


def test_gate_mask_mode_rules_classes_out() -> None:
    x = torch.zeros(2, 3, 1, 2)
    out = gated("mask")(x)
    # image 0: the gated class 1 loses even at x=1 where its logit is by far the highest
    assert out.argmax(1).tolist() == [[[0, 2]], [[1, 1]]]
    assert (out[0, 1] == GATE_FILL).all() and (out[1, [0, 2]] == GATE_FILL).all()
    # kept classes are untouched
    torch.testing.assert_close(out[0, [0, 2]], segmenter_logits()[0, [0, 2]])
    torch.testing.assert_close(out[1, 1], segmenter_logits()[1, 1])
    # a lower threshold keeps more classes (all in image 0, classes 0 and 1 in image 1)
    assert gated("mask", threshold=0.015)(x).argmax(1).tolist() == [[[0, 1]], [[0, 0]]]


def test_gate_zero_mode_reproduces_the_mlps_weakness() -> None:
    x = torch.zeros(2, 3, 1, 2)
    out = gated("zero")(x)
    assert (out[0, 1] == 0).all() and (out[1, [0, 2]] == 0).all()
    # Where the kept classes are negative, the zeroed (ruled-out) logit wins...
    assert out[0, :, 0, 0].argmax().item() == 1
    # ...and in image 1 the zeroed classes beat the one class the classifier believes in.
    assert out[1].argmax(0).tolist() == [[0, 0]]
    # The mask gate does not have that failure.
    assert gated("mask")(x)[0, :, 0, 0].argmax().item() == 0


def test_gate_off_passes_through_and_errors() -> None:
    x = torch.zeros(2, 3, 1, 2)
    torch.testing.assert_close(gated("off")(x), segmenter_logits())
    with pytest.raises(ConfigError, match="gate must be"):
        gated("soft")
    wrong = GatedSegmenter(FixedSegmenter(segmenter_logits()), FixedClassifier([[0.5, 0.5]]), 0.1, "mask")
    with pytest.raises(ValueError, match="classifier has 2 classes but the segmenter 3"):
        wrong(torch.zeros(1, 3, 1, 2))


# ----------------------------------------------------------------------------- splits


def patch(stem: str) -> PatchSample:
    return PatchSample(Path(f"/p/{stem}.png"), (1, 0))


def test_split_patches_keeps_the_patches_of_one_image_together() -> None:
    samples = []
    for source, style in (("img1", "-[{}]"), ("img10", "-[{}]"), ("img2", "+0[{}]"), ("img20", "-[{}]")):
        for y in (0, 32):
            for x in (0, 32, 320):
                samples.append(patch(f"{source}_y{y}_x{x}" + style.format("1, 0" if "-" in style else "10")))
    for seed in range(6):
        train, val = split_patches(samples, 0.25, seed)
        assert sorted(s.stem for s in train + val) == sorted(s.stem for s in samples)
        assert len(val) == 6 and len(train) == 18  # exactly one whole source image of four held out
        val_sources = {s.stem.split("_y")[0] for s in val}
        train_sources = {s.stem.split("_y")[0] for s in train}
        assert len(val_sources) == 1 and not val_sources & train_sources
    assert split_patches(samples, 0.25, 3) == split_patches(samples, 0.25, 3)
    assert split_patches(samples, 0.0, 0) == (samples, [])
    # plain names (published sets): every patch is its own source, trailing zeros included
    singles = [patch("patient1-[1, 0]"), patch("patient10-[1 0]"), patch("x100+0[10]"), patch("x10+0[10]")]
    train, val = split_patches(singles, 0.5, 0)
    assert len(train) == 2 and len(val) == 2
    with pytest.raises(ConfigError, match="at least two source images"):
        split_patches([patch("a_y0_x0-[1, 0]"), patch("a_y0_x32-[1, 0]")], 0.5, 0)


# ----------------------------------------------------------------------------- end to end


TINY = [
    "classifier.train.steps=4",
    "classifier.train.batch_size=4",
    "classifier.train.warmup_steps=0",
    "classifier.train.precision=fp32",
    "classifier.train.threads=1",
    "segmenter.train.steps=4",
    "segmenter.train.batch_size=4",
    "segmenter.train.warmup_steps=0",
    "segmenter.train.precision=fp32",
    "segmenter.train.threads=1",
    "segmenter.model.decoder_channels=16",
    "cam.batch_size=8",
    "cam.figure_patches=2",
    "data.val_fraction=0.25",
    "eval.max_overlays=1",
]


def tissue_data(root: Path) -> tuple[Path, Path]:
    """10 synthetic 64 px tiles: 8 cut into 32 px labelled patches, 2 kept whole as a pixel test set.

    Tissue masks: tumour 0, stroma 1, normal 2, background 3 (ignored).
    """
    from pathseg.data.synthetic import SynthConfig, write_dataset

    full = write_dataset(root / "all", 10, seed=0, config=SynthConfig(size=64))
    samples = pair_images_and_masks(full / "images", full / "tissue")
    class_map = ClassMap.from_config({"tumour": 0, "stroma": 1, "normal": 2}, ignore_values=[3])
    make_patch_label_set(samples[:8], class_map, root / "patches", patch_size=32, stride=32)
    for sample in samples[8:]:
        for sub, path in (("images", sample.image), ("masks", sample.mask)):
            (root / "test" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "test" / sub / path.name)
    return root / "patches", root / "test"


def tiny_config(patches: Path, test: Path, out: Path, extra: list[str] | None = None) -> weak.WeakConfig:
    pairs = [f"data.patches={patches}", f"data.test={test}", "data.ignore_values=[3]", f"output={out}"]
    return resolve_config(weak.WeakConfig, None, pairs + TINY + (extra or []))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[weak.WeakConfig, dict]:
    root = tmp_path_factory.mktemp("weak")
    patches, test = tissue_data(root)
    config = tiny_config(patches, test, root / "run")
    outcome = weak.run_all(config, show_progress=False)
    return config, outcome


def test_run_all_writes_every_stage(finished_run) -> None:
    config, outcome = finished_run
    root = Path(config.output)
    assert config.segmenter.model.name == "deeplabv3plus_resnet18"  # a kwarg override keeps the preset
    assert (root / "config.yaml").exists()
    assert (root / "classifier" / "model.safetensors").exists()
    assert (root / "segmenter" / "model.safetensors").exists()
    splits = json.loads((root / "classifier" / "splits.json").read_text())
    patches = discover_patch_labels(config.data.patches, config.data.classes)
    assert splits["train_patches"] + splits["val_patches"] == len(patches) and splits["val_patches"] > 0
    # one pseudo mask per layer and patch, choosing only classes in the patch's label
    layers = ["encoder.layer4", "encoder.layer3", "encoder.layer2"]
    assert outcome["pseudo_masks"]["generated"] == len(patches) > 0
    for layer in layers:
        folder = root / "pseudo_masks" / layer
        assert len(list(folder.glob("*.png"))) == len(patches)
        for sample in patches:
            mask = read_label_image(folder / f"{sample.stem}.png")
            assert mask.shape == (32, 32)
            allowed = {i for i, v in enumerate(sample.labels) if v}
            assert set(np.unique(mask).tolist()) <= allowed, sample.stem
    quality = json.loads((root / "cam_quality.json").read_text())
    assert set(quality) == set(layers)
    assert all(math.isfinite(q["miou"]) and 0 <= q["miou"] <= 1 for q in quality.values())
    figure = read_image(root / "figures" / "cams.png")
    assert figure.ndim == 3 and figure.shape[0] > 32 and figure.shape[1] > 32 * 7
    summary = json.loads((root / "summary.json").read_text())
    assert {"test", "test_ungated", "test_cams"} <= set(summary) and summary["gate"] == "mask"
    for arm in ("test", "test_ungated"):
        assert math.isfinite(summary[arm]["miou"]) and set(summary[arm]) >= {"iou/tumour", "iou/normal"}
        assert (root / arm / "metrics.json").exists()
    assert set(summary["test_cams"]) == set(layers)
    assert all(math.isfinite(s["miou"]) for s in summary["test_cams"].values())
    assert outcome["segmenter"]["test"] == summary["test"]


def test_run_all_resume_skips_finished_stages(finished_run) -> None:
    config, _ = finished_run
    root = Path(config.output)
    watched = [
        root / "classifier" / "model.safetensors",
        root / "segmenter" / "model.safetensors",
        root / "summary.json",
        *sorted((root / "pseudo_masks").rglob("*.png")),
    ]
    before = {p: p.stat().st_mtime_ns for p in watched}
    outcome = weak.run_all(config, resume=True, show_progress=False)
    assert "classifier" not in outcome and "segmenter" not in outcome
    assert outcome["pseudo_masks"]["generated"] == 0
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    # A missing pseudo mask is made again, and only that one.
    lost = watched[3]
    lost.unlink()
    summary = weak.generate_pseudo_masks(config, show_progress=False)
    assert summary["generated"] == 1 and lost.exists()
    # (the lost patch's masks of the other layers are written again with it, nothing else)
    others = [p for p in watched[3:] if p.name != lost.name]
    assert len(others) == len(watched) - 3 - 3
    assert all(p.stat().st_mtime_ns == before[p] for p in others)


def test_config_errors_come_before_any_work(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path / "patches", tmp_path / "test", tmp_path / "run", ["cam.layers=[encoder.layer4]"]
    )
    with pytest.raises(ConfigError, match=r"3 weights for 1 cam\.layers"):
        weak.run_all(config, show_progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"data\.patches is not set"):
        weak.run_all(resolve_config(weak.WeakConfig, None, [f"output={tmp_path / 'run'}"]))
    with pytest.raises(ConfigError, match="no trained classifier"):
        weak.generate_pseudo_masks(tiny_config(tmp_path, tmp_path, tmp_path / "none"), show_progress=False)


def test_real_wsss4luad_patches_of_mixed_sizes(tmp_path: Path) -> None:
    """WSSS4LUAD's own training patches (labels in names, sizes 174-280 px): mixed sizes are refused
    with the file named unless data.crop_size is set; with it, all three stages run on them (a crop
    larger than a patch pads its image and its pseudo masks)."""
    from pathseg.errors import DataError
    from tests.conftest import shared_data_or_skip

    examples = shared_data_or_skip("wsss4luad", "train_examples")
    samples = discover_patch_labels(examples, ["tumour", "stroma", "normal"])
    assert {s.image.name: s.labels for s in samples}["436219-9328-56427-[1, 1, 0].png"] == (1, 1, 0)
    base = [f"data.patches={examples}", f"output={tmp_path / 'run'}", *TINY, "data.val_fraction=0"]
    with pytest.raises(DataError, match=r"data\.crop_size") as info:
        weak.train_classifier(resolve_config(weak.WeakConfig, None, base), show_progress=False)
    assert examples.name in str(info.value)
    config = resolve_config(weak.WeakConfig, None, [*base, "data.crop_size=192"])
    weak.train_classifier(config, show_progress=False)
    summary = weak.generate_pseudo_masks(config, show_progress=False)
    assert summary["generated"] == 4
    for sample in samples:  # pseudo masks at each patch's own size, only classes of its label
        mask = read_label_image(tmp_path / "run" / "pseudo_masks" / "encoder.layer4" / f"{sample.stem}.png")
        assert mask.shape == read_image(sample.image).shape[:2]
        assert set(np.unique(mask).tolist()) <= {i for i, v in enumerate(sample.labels) if v}
    outcome = weak.train_segmenter(config, show_progress=False)
    assert outcome["best"] is None and (tmp_path / "run" / "segmenter" / "model.safetensors").exists()


def test_faithful_mode_trains_the_classifier_with_momentum_5e4(tmp_path: Path) -> None:
    """MLPS's SGD(params, lr, weight_decay) put 5e-4 into momentum; faithful=true reproduces it."""
    patches, test = tissue_data(tmp_path)
    config = tiny_config(patches, test, tmp_path / "run", ["faithful=true", "data.val_fraction=0"])
    weak.train_classifier(config, show_progress=False)
    [state_file] = (tmp_path / "run" / "classifier" / "checkpoints").glob("step_*/training_state.pt")
    group = torch.load(state_file, weights_only=False)["optimizer"]["param_groups"][0]
    assert group["momentum"] == 5e-4 and "nesterov" in group  # SGD, not AdamW
    plain = tiny_config(patches, test, tmp_path / "plain", ["data.val_fraction=0"])
    weak.train_classifier(plain, show_progress=False)
    [state_file] = (tmp_path / "plain" / "classifier" / "checkpoints").glob("step_*/training_state.pt")
    assert "betas" in torch.load(state_file, weights_only=False)["optimizer"]["param_groups"][0]  # AdamW
