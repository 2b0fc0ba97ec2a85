"""Nucleus-aware pretraining: mask images, the modulated convolution, one translator step that moves
every sub-network, the export of G_BA, and `pathseg nuclei pretrain` -> `nuclei train --init` ->
`nuclei predict` through the real entry point on synthetic 64 px tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathseg.data.synthetic import SynthConfig, write_dataset
from pathseg.data.targets import hover_maps
from pathseg.methods.nuclei.config import NucleusPretrainConfig
from pathseg.methods.nuclei.translator import Translator, export_segmenter, mask_image
from pathseg.models.translation import ModulatedConv2d
from pathseg.models.weights import load_weights, read_config
from tests.test_bad_input import pathseg

TINY_SEGMENTER = {"name": "resunet_resnet18", "decoder_channels": [16, 16, 8, 8, 8]}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mask_image_channels_on_hand_made_nuclei() -> None:
    instances = np.zeros((12, 20), np.int32)
    instances[2:9, 2:9] = 1  # 7x7 square
    instances[2:9, 9:16] = 2  # touching it on the right
    image = mask_image(instances)
    assert image.shape == (3, 12, 20) and image.min() >= -1 and image.max() <= 1
    nucleus, contour, distance = (image + 1) / 2
    np.testing.assert_array_equal(nucleus, instances > 0)
    # The inner contour of each square: its outer ring, so the two touching squares stay apart.
    ring = np.zeros((7, 7), bool)
    ring[[0, -1], :] = ring[:, [0, -1]] = True
    np.testing.assert_array_equal(contour[2:9, 2:9], ring)
    np.testing.assert_array_equal(contour[2:9, 9:16], ring)
    # Distance: 1 at each centre, 0 on the contour and outside.
    assert distance[5, 5] == pytest.approx(1) and distance[5, 12] == pytest.approx(1)
    assert distance[contour > 0].max() == 0 and distance[nucleus == 0].max() == 0
    assert 0 < distance[4, 4] < 1


def test_modulated_conv_matches_an_explicit_per_sample_kernel() -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 5, 3, style_dim=6)
    torch.nn.init.normal_(conv.affine.weight)  # a style that really modulates
    x, style = torch.randn(2, 4, 7, 7), torch.randn(2, 6)
    out = conv(x, style)
    scales = conv.affine(style)
    for b in range(2):
        kernel = conv.weight * conv.scale * scales[b][None, :, None, None]
        kernel = kernel / kernel.pow(2).sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        expected = F.conv2d(x[b : b + 1], kernel, padding=1) + conv.bias[None, :, None, None]
        torch.testing.assert_close(out[b : b + 1], expected, atol=1e-5, rtol=1e-4)


def _batch(count: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    items = []
    for _ in range(count):
        instances = np.zeros((size, size), np.int32)
        for k in range(1, 4):
            y, x = rng.integers(4, size - 8, 2)
            instances[y : y + 5, x : x + 6] = k
        items.append(instances)
    return {
        "image": torch.rand(count, 3, size, size) * 2 - 1,
        "mask_image": torch.stack([torch.from_numpy(mask_image(m)) for m in items]),
        "nucleus": torch.stack([torch.from_numpy((m > 0).astype(np.int64)) for m in items]),
        "hv": torch.stack([torch.from_numpy(hover_maps(m)) for m in items]),
    }


def _tiny_translator() -> Translator:
    config = NucleusPretrainConfig.model_validate(
        {
            "translator": {
                "segmenter": TINY_SEGMENTER,
                "generator_widths": [8, 16, 16],
                "z_dim": 8,
                "w_dim": 16,
                "mask_code_dim": 8,
                "discriminator_width": 8,
                "discriminator_layers": 2,
            }
        }
    )
    torch.manual_seed(0)
    return Translator(config.translator, config.loss)


def test_one_translator_step_moves_every_sub_network() -> None:
    translator = _tiny_translator()
    before = {name: p.detach().clone() for name, p in translator.named_parameters()}
    optimizer = torch.optim.Adam(translator.parameters(), lr=1e-2)
    loss, logs = translator(_batch())
    assert torch.isfinite(loss)
    assert {"g_adversarial", "cycle_a", "cycle_b", "guidance", "d_a", "d_b"} <= logs.keys()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for part in ("mapping", "g_ab", "style_encoder", "g_ba", "d_a", "d_b"):
        moved = [
            name
            for name, p in translator.named_parameters()
            if name.startswith(part + ".") and not torch.equal(p, before[name])
        ]
        assert moved, f"{part} did not change"


def test_generator_loss_does_not_train_the_discriminators() -> None:
    """The generators' adversarial terms see the discriminators with detached weights: with the
    discriminator losses switched off, no gradient reaches D_A or D_B."""
    translator = _tiny_translator()
    batch = _batch()
    masks, real = batch["mask_image"], batch["image"]
    fake_b = translator.generate(masks, translator.random_styles(2, masks.device))
    from pathseg.methods.nuclei.translator import _frozen

    _frozen(translator.d_b, fake_b).pow(2).mean().backward()
    assert all(p.grad is None for p in translator.d_b.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in translator.g_ab.parameters())
    assert real.shape == fake_b.shape


def test_export_keeps_the_hover_rows_of_g_ba() -> None:
    translator = _tiny_translator().eval()
    segmenter = export_segmenter(translator).eval()
    assert segmenter.config["num_classes"] == 4
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        hover, _ = translator.read(x)
        torch.testing.assert_close(segmenter(x), hover)


@pytest.fixture(scope="module")
def synthetic_nuclei(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nuclei_ssl")
    write_dataset(root / "train", 6, seed=0, config=SynthConfig(size=64))
    write_dataset(root / "test", 2, seed=1, config=SynthConfig(size=64))
    return root


def test_pretrain_finetune_predict_through_the_cli(synthetic_nuclei: Path, tmp_path: Path) -> None:
    run = tmp_path / "ssl"
    settings = [
        "--set", "translator.segmenter.decoder_channels=[16,16,8,8,8]",
        "--set", "translator.generator_widths=[8,16,16]",
        "--set", "translator.discriminator_width=8",
        "--set", "samples.count=3",
        "--set", "train.eval_every=2",
        "--set", "train.checkpoint_every=2",
        "--set", "train.threads=1",
    ]  # fmt: skip
    result = pathseg(
        "nuclei", "pretrain", "--labelled", synthetic_nuclei / "train", "--monitor",
        synthetic_nuclei / "train", "--crop-size", "32", "--steps", "3", "--batch-size", "2",
        "--out", run, *settings,
    )  # fmt: skip
    assert result.code == 0, result.stderr + result.stdout
    for name in ("pseudo_masks.json", "samples.png", "report.html", "translator.safetensors"):
        assert (run / name).exists(), name
    assert len(list((run / "samples").glob("step_*.png"))) == 2  # steps 2 and 3
    fitted = json.loads((run / "pseudo_masks.json").read_text())
    assert fitted["num_images"] == 6 and fitted["num_nuclei"] > 20
    validation = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("monitor_aji" in row for row in validation)
    segmenter = read_config(run / "model.safetensors")
    assert segmenter["name"].startswith("resunet") and segmenter["num_classes"] == 4

    resumed = pathseg("nuclei", "pretrain", "--out", run, "--resume", "--steps", "4")
    assert resumed.code == 0, resumed.stderr + resumed.stdout
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 4

    tuned = tmp_path / "tuned"
    result = pathseg(
        "nuclei", "train", "--train", synthetic_nuclei / "train", "--test", synthetic_nuclei / "test",
        "--init", run, "--crop-size", "32", "--steps", "2", "--batch-size", "2", "--out", tuned,
        "--set", "model.decoder_channels=[16,16,8,8,8]", "--set", "train.threads=1",
        "--set", "train.warmup_steps=0", "--set", "train.lr=1e-12",
    )  # fmt: skip
    assert result.code == 0, result.stderr + result.stdout
    # With a vanishing learning rate the fine-tuned encoder is still the pretrained G_BA's.
    pretrained = load_weights(run / "model.safetensors")
    tuned_weights = load_weights(tuned / "checkpoints" / "step_0000002" / "model.safetensors")
    name = "encoder.conv1.weight" if "encoder.conv1.weight" in pretrained else next(iter(pretrained))
    torch.testing.assert_close(tuned_weights[name], pretrained[name], atol=1e-6, rtol=0)

    out = tmp_path / "predicted"
    result = pathseg("nuclei", "predict", tuned, synthetic_nuclei / "test" / "images", "--out", out)
    assert result.code == 0, result.stderr + result.stdout
    assert (out / "synth_00001_instances.png").exists()


def test_pretrain_bad_inputs_are_one_line(tmp_path: Path) -> None:
    result = pathseg("nuclei", "pretrain", "--out", tmp_path / "r")
    assert result.code == 2 and "data.labelled is not set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "instances").mkdir()
    result = pathseg("nuclei", "pretrain", "--labelled", empty, "--out", tmp_path / "r2")
    assert result.code == 2 and str(empty) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
