"""CPU tests for pathseg.models: one shared suite over every registered model, then specifics."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from pathseg.errors import ConfigError, DataError, PathsegError
from pathseg.models import (
    DeepLabV3Plus,
    ResNetEncoder,
    UNet,
    create_model,
    list_models,
    load_weights,
    model_from_file,
    save_weights,
)
from pathseg.models.blocks import SelfAttention2d, group_norm, timestep_embedding

NUM_CLASSES = 3
# The smallest size valid for every registered model (DeepLab needs >= 2 * output_stride).
SIZE = 32

# Small variants keep the shared suite fast; models registered later without an entry here are
# tested at their defaults.
_TINY_UNET = {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1, "norm_groups": 4}
TINY: dict[str, dict[str, Any]] = {
    "unet": _TINY_UNET,
    "unet_small": {"base_channels": 8},
    "deeplabv3plus": {"decoder_channels": 32},
    "deeplabv3plus_resnet18": {"decoder_channels": 32},
    "deeplabv3plus_resnet50": {"decoder_channels": 32},
    "resunet": {"decoder_channels": (16, 16, 8, 8, 8)},
    "resunet_resnet18": {"decoder_channels": (16, 16, 8, 8, 8)},
    "resunet_resnet34": {"decoder_channels": (16, 16, 8, 8, 8)},
    "cam_resnet50": {"output_stride": 16},
    "prob_unet": {"base_channels": 8, "channel_mults": (1, 2), "norm_groups": 4, "encoder_filters": (8, 16)},
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Any:
    # These tensors are tiny: intra-op threads cost more in synchronisation than they save, and
    # on a shared, busy CPU they made the suite several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=3, num_classes=NUM_CLASSES, **TINY.get(name, {}))


def _image_level(model: nn.Module) -> bool:
    """Classifiers (one logit per class and image) declare ``output_kind = "image"``."""
    return getattr(model, "output_kind", "dense") == "image"


def _batch(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list_models())
class TestEveryModel:
    def test_forward_shape(self, name: str) -> None:
        model = _built(name).eval()
        with torch.no_grad():
            out = model(_batch())
        expected = (2, NUM_CLASSES) if _image_level(model) else (2, NUM_CLASSES, SIZE, SIZE)
        assert out.shape == expected
        assert torch.isfinite(out).all()

    def test_backward_gives_finite_grads(self, name: str) -> None:
        model = _built(name).train()
        model.zero_grad(set_to_none=True)
        if _image_level(model):
            labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
            nn.functional.binary_cross_entropy_with_logits(model(_batch()), labels).backward()
        elif hasattr(model, "elbo_terms"):  # probabilistic models: the posterior runs only in training
            target = torch.randint(0, NUM_CLASSES, (2, SIZE, SIZE))
            terms = model(_batch(), mask=target)
            (nn.functional.cross_entropy(terms["logits"], target) + terms["kl"]).backward()
        else:
            target = torch.randint(0, NUM_CLASSES, (2, SIZE, SIZE))
            nn.functional.cross_entropy(model(_batch()), target).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has non-finite gradient"
        model.zero_grad(set_to_none=True)

    def test_train_and_eval_modes(self, name: str) -> None:
        model = _built(name)
        model.train()
        assert all(m.training for m in model.modules())
        model(_batch())
        model.eval()
        assert not any(m.training for m in model.modules())
        with torch.no_grad():
            assert torch.equal(model(_batch()), model(_batch()))

    def test_config_rebuilds_same_architecture(self, name: str) -> None:
        model = _built(name)
        config = json.loads(json.dumps(model.config))
        assert config["name"] == name
        rebuilt = create_model(**config)
        assert rebuilt.config == model.config
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes

    def test_save_and_model_from_file_round_trip(self, name: str, tmp_path: Any) -> None:
        model = _built(name).eval()
        path = save_weights(model, tmp_path / "w.safetensors")
        loaded = model_from_file(path)
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(_batch()), model(_batch()))

    def test_unknown_kwarg_is_config_error(self, name: str) -> None:
        with pytest.raises(ConfigError, match="no_such_option") as info:
            create_model(name, no_such_option=1)
        assert "allowed" in str(info.value)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ConfigError, match="unet_small") as info:
        create_model("unet_smal")
    assert "did you mean 'unet_small'" in str(info.value)


def test_preset_defaults_can_be_overridden() -> None:
    assert create_model("unet_small").config["base_channels"] == 16
    assert create_model("unet_small", base_channels=8).config["base_channels"] == 8


# --------------------------------------------------------------------------- blocks


def test_group_norm_groups_divide_channels() -> None:
    assert group_norm(48, 32).num_groups == 24
    assert group_norm(4, 8).num_groups == 4


def test_timestep_embedding_odd_width() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 3.5]), 7)
    assert emb.shape == (2, 7)
    assert torch.equal(emb[:, -1], torch.zeros(2))


# --------------------------------------------------------------------------- UNet


def _tiny_unet(**kwargs: Any) -> UNet:
    torch.manual_seed(0)
    return UNet(**{**_TINY_UNET, **kwargs})


def test_unet_rejects_non_divisible_size() -> None:
    model = _tiny_unet(channel_mults=(1, 2, 4))
    with pytest.raises(ValueError, match=r"divisible by 4; got 62x64 \(pad to 64x64"):
        model(torch.randn(1, 3, 62, 64))


def test_unet_timesteps_required_or_rejected() -> None:
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="pass timesteps"):
        _tiny_unet(time_embedding=True)(x)
    with pytest.raises(ValueError, match="no time embedding"):
        _tiny_unet()(x, timesteps=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        _tiny_unet(time_embedding=True)(x, timesteps=torch.tensor([1, 2, 3]))


def test_unet_timestep_changes_output() -> None:
    model = _tiny_unet(time_embedding=True).eval()
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x, timesteps=torch.tensor([3, 700]))
        scalar = model(x, timesteps=torch.tensor(3))
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(scalar[0], out[0])


def test_unet_cond_vector_changes_output() -> None:
    model = _tiny_unet(cond_dim=4).eval()
    x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    cond = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    with torch.no_grad():
        out = model(x, cond=cond)
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="cond"):
        model(x)
    with pytest.raises(ValueError, match="cond_dim=0"):
        _tiny_unet()(x, cond=cond)


def test_unet_to_segmenter(tmp_path: Any) -> None:
    model = _tiny_unet(out_channels=3, time_embedding=True, cond_dim=2)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    seg = model.to_segmenter(num_classes=5, fixed_timestep=10)
    assert seg is model
    after = seg.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert seg.config["num_classes"] == 5 and seg.config["fixed_timestep"] == 10

    x, cond = torch.randn(2, 3, 16, 16), torch.zeros(2, 2)
    seg.eval()
    with torch.no_grad():
        out = seg(x, cond=cond)
        assert out.shape == (2, 5, 16, 16)
        assert torch.equal(out, seg(x, timesteps=torch.tensor([10, 10]), cond=cond))
        # The segmenter (fixed timestep included) survives a save / rebuild.
        rebuilt = model_from_file(save_weights(seg, tmp_path / "seg.safetensors"))
        assert torch.equal(rebuilt(x, cond=cond), out)


def test_unet_attention_where_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny_unet(channel_mults=(1, 2, 4), attention_levels=(1,), mid_attention=True)
    assert model.down[0].attn is None and model.down[2].attn is None
    assert all(isinstance(a, SelfAttention2d) for a in model.down[1].attn)
    assert isinstance(model.mid_attn, SelfAttention2d)
    # Decoder level 1 is the middle entry of model.up (built deepest first).
    assert model.up[1].attn is not None and model.up[0].attn is None

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model(torch.randn(1, 3, 16, 16))
    assert len(calls) == 3  # encoder level 1, bottleneck, decoder level 1 (one res block each)


def test_unet_bad_attention_level() -> None:
    with pytest.raises(ConfigError, match="attention_levels"):
        UNet(channel_mults=(1, 2), attention_levels=(2,))


# --------------------------------------------------------------------------- DeepLab


def test_resnet_output_stride_sets_last_feature_size() -> None:
    x = torch.randn(1, 3, 64, 64)
    encoder = ResNetEncoder(18, output_stride=8).eval()
    with torch.no_grad():
        assert [f.shape[-1] for f in encoder(x)] == [32, 16, 8, 8, 8]
        sizes = {os: ResNetEncoder(18, output_stride=os).eval()(x)[-1].shape[-1] for os in (16, 32)}
    assert sizes == {16: 4, 32: 2}


def test_resnet_torchvision_layout_and_prefix_loading(tmp_path: Any) -> None:
    encoder = ResNetEncoder(50)
    names = set(encoder.state_dict())
    expected = {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight"}
    assert expected <= names
    # A torchvision-style checkpoint (with a classifier the segmenter does not have).
    source = ResNetEncoder(18)
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "resnet18.pth")
    net = DeepLabV3Plus(encoder_depth=18, decoder_channels=16)
    load_weights(net, tmp_path / "resnet18.pth", strict=False, prefix_map={"": "encoder."})
    assert torch.equal(net.encoder.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    with pytest.raises(PathsegError, match=r"fc\.weight"):
        load_weights(net, tmp_path / "resnet18.pth", prefix_map={"": "encoder."})


def test_deeplab_batch_size_one_training() -> None:
    model = DeepLabV3Plus(encoder_depth=18, output_stride=8, decoder_channels=16).train()
    out = model(torch.randn(1, 3, 32, 32))
    out.mean().backward()
    assert out.shape == (1, 2, 32, 32)


def test_deeplab_odd_sizes_and_too_small() -> None:
    model = DeepLabV3Plus(encoder_depth=18, decoder_channels=16, norm="group").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 45)).shape == (1, 2, 67, 45)
    with pytest.raises(ValueError, match=">= 32"):
        model(torch.randn(1, 3, 31, 64))


def test_deeplab_default_aspp_rates() -> None:
    model = DeepLabV3Plus(encoder_depth=18, output_stride=8, decoder_channels=8)
    assert model.config["aspp_rates"] == [12, 24, 36]
    with pytest.raises(ConfigError, match="output_stride"):
        DeepLabV3Plus(output_stride=4)


# --------------------------------------------------------------------------- weights


def test_load_nested_pt_state_dict(tmp_path: Any) -> None:
    source, target = _tiny_unet(), _tiny_unet(base_channels=8)
    torch.nn.init.constant_(source.head.weight, 0.5)
    torch.save({"epoch": 3, "model": {"state_dict": source.state_dict()}}, tmp_path / "ckpt.pt")
    load_weights(target, tmp_path / "ckpt.pt")
    assert torch.equal(target.head.weight, source.head.weight)

    prefixed = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": {}, "ema": prefixed}, tmp_path / "ema.pth")
    state = load_weights(tmp_path / "ema.pth", key="ema", prefix_map={"module.": ""})
    assert set(state) == set(source.state_dict())


def test_missing_file_names_path(tmp_path: Any) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(DataError, match=r"nope\.safetensors"):
        load_weights(_tiny_unet(), missing)
    with pytest.raises(PathsegError, match="only local"):
        load_weights("https://example.org/w.safetensors")


def test_shape_mismatch_lists_keys_and_shapes(tmp_path: Any) -> None:
    path = save_weights(_tiny_unet(out_channels=3), tmp_path / "w.safetensors")
    with pytest.raises(PathsegError, match=r"head.weight: file \(3, 8, 1, 1\) vs model \(2, 8, 1, 1\)"):
        load_weights(_tiny_unet(out_channels=2), path, strict=False)


def test_strict_key_mismatch_and_missing_config(tmp_path: Any) -> None:
    state = _tiny_unet().state_dict()
    state.pop("head.bias")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(PathsegError, match=r"1 missing from the file: head\.bias"):
        load_weights(_tiny_unet(), tmp_path / "partial.pt")
    load_weights(_tiny_unet(), tmp_path / "partial.pt", strict=False)
    with pytest.raises(DataError, match="no model config"):
        model_from_file(tmp_path / "partial.pt")
