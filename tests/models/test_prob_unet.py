"""Probabilistic U-Net: shapes, latent distributions, KL, loss, a short training run, sampling, save/load."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from pathseg.errors import ConfigError
from pathseg.models import create_model, model_from_file, save_weights
from pathseg.models.prob_unet import (
    AxisAlignedGaussianEncoder,
    ProbUNet,
    make_prob_unet_loss,
    one_hot_mask,
    prob_unet_loss,
)

TINY: dict[str, Any] = {
    "base_channels": 8,
    "channel_mults": (1, 2),
    "num_res_blocks": 1,
    "norm_groups": 4,
    "encoder_filters": (8, 16, 32),
    "convs_per_block": 2,
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(num_classes: int = 2, seed: int = 0, **kwargs: Any) -> ProbUNet:
    torch.manual_seed(seed)
    return ProbUNet(num_classes=num_classes, **{**TINY, **kwargs})


def _image(batch: int = 2, h: int = 32, w: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _mask(batch: int, h: int, w: int, num_classes: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, num_classes, (batch, h, w), generator=torch.Generator().manual_seed(seed))


def _closed_form_kl(q: Independent, p: Independent) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, written out: per dimension
    log(sp / sq) + (sq^2 + (mq - mp)^2) / (2 sp^2) - 1/2, summed over dimensions, mean over the batch."""
    mq, sq = q.base_dist.loc, q.base_dist.scale
    mp, sp = p.base_dist.loc, p.base_dist.scale
    per_dim = torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5
    return per_dim.sum(dim=1).mean()


# --------------------------------------------------------------------------- shapes and distributions


def test_shapes_on_a_non_square_image() -> None:
    model = _tiny(num_classes=3).eval()
    image, mask = _image(2, 64, 96), _mask(2, 64, 96, 3)
    with torch.no_grad():
        assert model(image).shape == (2, 3, 64, 96)
        assert model(image, z=torch.zeros(2, 6)).shape == (2, 3, 64, 96)
        assert model.sample(image, 4).shape == (4, 2, 3, 64, 96)
        terms = model.elbo_terms(image, mask)
    assert terms["logits"].shape == (2, 3, 64, 96)
    assert terms["kl"].shape == ()
    for dist in (model.prior_distribution(image), model.posterior_distribution(image, mask)):
        assert isinstance(dist, Independent)
        assert dist.batch_shape == (2,) and dist.event_shape == (6,)
        assert (dist.base_dist.scale > 0).all()


def test_encoder_on_its_own_is_mean_pool_then_head() -> None:
    torch.manual_seed(0)
    enc = AxisAlignedGaussianEncoder(4, latent_dim=5, filters=(8, 16), convs_per_block=3)
    x = torch.randn(3, 4, 20, 28)
    dist = enc(x)
    assert dist.batch_shape == (3,) and dist.event_shape == (5,)
    # Independent recomputation: conv blocks, spatial mean, 1x1 conv; first half mu, second log sigma.
    stats = enc.head(enc.body(x).mean(dim=(2, 3), keepdim=True)).flatten(1)
    torch.testing.assert_close(dist.base_dist.loc, stats[:, :5])
    torch.testing.assert_close(dist.base_dist.scale, stats[:, 5:].exp())
    # 2 blocks of 3 convs + ReLU, one pooling between them, then the head.
    convs = [m for m in enc.body if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and sum(isinstance(m, torch.nn.AvgPool2d) for m in enc.body) == 1
    # Initialisation: biases within two std of N(0, 1e-3); He-normal weights, std sqrt(2 / fan_in).
    assert all(c.bias.abs().max() <= 2e-3 for c in [*convs, enc.head])
    big = convs[-1].weight  # 16 * 16 * 9 = 2304 weights, fan_in 144
    assert abs(big.std().item() - math.sqrt(2 / 144)) < 0.1 * math.sqrt(2 / 144)


def test_encoder_rejects_bad_inputs_and_arguments() -> None:
    enc = AxisAlignedGaussianEncoder(3, filters=(8, 16, 32, 64))
    with pytest.raises(ValueError, match=r"H and W >= 8, got 4x16"):
        enc(torch.randn(1, 3, 4, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.randn(1, 2, 16, 16))
    with pytest.raises(ConfigError, match="filters"):
        AxisAlignedGaussianEncoder(3, filters=())
    with pytest.raises(ConfigError, match="latent_dim"):
        AxisAlignedGaussianEncoder(3, latent_dim=0)


def test_one_hot_mask_zeroes_ignored_pixels() -> None:
    mask = torch.tensor([[[0, 2, 255], [1, 1, 0]]])
    expected = torch.tensor(
        [
            [[1, 0, 0], [0, 0, 1]],  # class 0
            [[0, 0, 0], [1, 1, 0]],  # class 1
            [[0, 1, 0], [0, 0, 0]],  # class 2; the ignored pixel (0, 2) is 0 everywhere
        ],
        dtype=torch.float32,
    )
    assert torch.equal(one_hot_mask(mask, 3), expected[None])
    with pytest.raises(ValueError, match=r"value 3, outside classes 0\.\.2"):
        one_hot_mask(torch.tensor([[[0, 3]]]), 3)
    with pytest.raises(ValueError, match="integer"):
        one_hot_mask(torch.zeros(1, 2, 2), 3)


# --------------------------------------------------------------------------- KL


def test_kl_closed_form_hand_value() -> None:
    # q = N((1, 0), (1, 1)), p = N((0, 0), (2, 1)). First dimension:
    # log(2/1) + (1 + 1) / (2 * 4) - 1/2 = 0.693147 + 0.25 - 0.5 = 0.443147; second: identical -> 0.
    q = Independent(Normal(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])), 1)
    p = Independent(Normal(torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 1.0]])), 1)
    assert kl_divergence(q, p).item() == pytest.approx(0.443147, abs=1e-6)
    assert _closed_form_kl(q, p).item() == pytest.approx(0.443147, abs=1e-6)
    assert kl_divergence(q, q).item() == 0.0


def test_kl_is_zero_when_posterior_equals_prior_and_positive_otherwise() -> None:
    model = _tiny(num_classes=2)
    image, mask = _image(), _mask(2, 32, 32, 2)

    terms = model.elbo_terms(image, mask)
    expected = _closed_form_kl(model.posterior_distribution(image, mask), model.prior(image))
    assert terms["kl"].item() > 0.01
    torch.testing.assert_close(terms["kl"], expected)

    # Give the posterior the prior's weights and zero weights on its two mask channels: it then
    # computes exactly the prior's function, whatever the mask.
    state = model.prior.state_dict()
    first = state["body.0.weight"]
    state["body.0.weight"] = torch.cat([first, torch.zeros(first.shape[0], 2, 3, 3)], dim=1)
    model.posterior.load_state_dict(state)
    q, p = model.posterior_distribution(image, mask), model.prior(image)
    torch.testing.assert_close(q.base_dist.loc, p.base_dist.loc)
    torch.testing.assert_close(q.base_dist.scale, p.base_dist.scale)
    assert abs(model.elbo_terms(image, mask)["kl"].item()) < 1e-5


def test_kl_stays_float32_under_bf16_autocast() -> None:
    model = _tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model(_image(), mask=_mask(2, 32, 32, 2))
        prior = model.prior(_image())
    assert terms["logits"].dtype == torch.bfloat16  # the convolutions did run in bf16
    assert prior.base_dist.loc.dtype == prior.base_dist.scale.dtype == torch.float32
    assert terms["kl"].dtype == torch.float32 and torch.isfinite(terms["kl"])


# --------------------------------------------------------------------------- loss


def test_loss_is_masked_cross_entropy_plus_beta_kl() -> None:
    model = _tiny(num_classes=3)
    image, mask = _image(), _mask(2, 32, 32, 3)
    mask[0, :10] = 255  # 320 of 2048 pixels unlabelled
    torch.manual_seed(5)  # the same posterior draw for the loss and the reference below
    loss, logs = prob_unet_loss(model, image, mask, beta=0.5)
    torch.manual_seed(5)
    terms = model.elbo_terms(image, mask)
    # Reference CE: -log softmax at the true class, averaged over the 1728 labelled pixels only.
    labelled = mask != 255
    log_p = terms["logits"].log_softmax(dim=1)
    picked = log_p.gather(1, mask.clamp(max=2).unsqueeze(1)).squeeze(1)
    ce = -picked[labelled].sum() / labelled.sum()
    torch.testing.assert_close(loss, ce + 0.5 * terms["kl"])
    assert logs == pytest.approx({"ce": ce.item(), "kl": terms["kl"].item()})
    assert all(isinstance(v, float) for v in logs.values())

    # The engine form takes a batch dict and gives the same numbers.
    torch.manual_seed(5)
    engine_loss, _ = make_prob_unet_loss(beta=0.5)(model, {"image": image, "mask": mask, "step": 1})
    torch.testing.assert_close(engine_loss, loss)

    # Nothing labelled: the CE term is 0 (not NaN) and only the KL is left.
    torch.manual_seed(5)
    empty_loss, empty_logs = prob_unet_loss(model, image, torch.full_like(mask, 255), beta=2.0)
    assert empty_logs["ce"] == 0.0
    assert empty_loss.item() == pytest.approx(2.0 * empty_logs["kl"], rel=1e-6)


# --------------------------------------------------------------------------- training


def _disk_batch(g: torch.Generator, batch: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright disks on a dark noisy background; each mask is, by a coin flip of the annotator,
    the disk itself or the disk grown by 3 pixels."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy = torch.randint(12, 20, (batch, 1, 1), generator=g)
    cx = torch.randint(12, 20, (batch, 1, 1), generator=g)
    radius = torch.randint(5, 8, (batch, 1, 1), generator=g).float()
    dist = ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()
    disk = dist <= radius
    noise = 0.1 * torch.randn(batch, 3, size, size, generator=g)
    image = torch.where(disk, 1.0, -1.0)[:, None] + noise
    generous = torch.randint(0, 2, (batch, 1, 1), generator=g).bool()
    mask = torch.where(generous, dist <= radius + 3, disk).long()
    return image, mask


def test_training_lowers_loss_moves_both_encoders_and_gives_diverse_samples() -> None:
    model = _tiny(num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        image, mask = _disk_batch(g)
        # beta ~ 1 / pixels: with a per-pixel mean CE this is the paper's ELBO (summed CE + KL).
        loss, _ = prob_unet_loss(model, image, mask, beta=1e-3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    after = model.state_dict()
    for prefix in ("prior.", "posterior.", "backbone.", "fcomb."):
        moved = [k for k in after if k.startswith(prefix) and not torch.equal(after[k], before[k])]
        assert moved, f"no {prefix}* weight changed"
    assert not torch.equal(after["prior.head.weight"], before["prior.head.weight"])
    assert not torch.equal(after["posterior.body.0.weight"], before["posterior.body.0.weight"])

    # Sixteen prior samples of one test disk: their foreground areas must differ, and spread
    # over at least half the gap between the two annotators' areas (radius r vs r + 3).
    image, _ = _disk_batch(torch.Generator().manual_seed(5), batch=1)
    model.eval()
    with torch.no_grad():
        masks = model.sample(image, 16, torch.Generator().manual_seed(1)).argmax(dim=2)
    areas = masks.flatten(1).sum(dim=1).float()
    disk_area = (image[0, 0] > 0).sum().item()
    radius = math.sqrt(disk_area / math.pi)
    gap = math.pi * ((radius + 3) ** 2 - radius**2)
    assert len(set(areas.tolist())) > 1
    assert (areas.max() - areas.min()).item() > 0.5 * gap


# --------------------------------------------------------------------------- sampling and defaults


def test_sampling_is_reproducible_with_a_generator() -> None:
    model = _tiny(num_classes=2).eval()
    image = _image()
    with torch.no_grad():
        a = model.sample(image, 3, torch.Generator().manual_seed(7))
        b = model.sample(image, 3, torch.Generator().manual_seed(7))
        c = model.sample(image, 3, torch.Generator().manual_seed(8))
        one = model(image, generator=torch.Generator().manual_seed(7))
        more = model.sample(image, 5, torch.Generator().manual_seed(7))
        mean = model(image)
        at_mean = model(image, z=model.prior(image).mean)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # different z within one call
    # forward with a generator is the first of sample's draws; without one it uses the prior mean.
    assert torch.equal(one, a[0])
    assert torch.equal(more[:3], a)  # more samples extend fewer, they do not reshuffle them
    assert torch.equal(mean, at_mean)


def test_bad_arguments_are_clear_errors() -> None:
    model = _tiny(num_classes=2)
    image = _image()
    with pytest.raises(ValueError, match=r"z must have shape \(2, 6\)"):
        model(image, z=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="does not match image"):
        model.elbo_terms(image, _mask(2, 16, 32, 2))
    with pytest.raises(ValueError, match="drop z/generator"):
        model(image, z=torch.zeros(2, 6), mask=_mask(2, 32, 32, 2))
    with pytest.raises(ValueError, match="n must be >= 1"):
        model.sample(image, 0)
    with pytest.raises(ConfigError, match="num_classes"):
        ProbUNet(num_classes=0)


# --------------------------------------------------------------------------- registry and weights


def test_create_model_config_and_safetensors_round_trip(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = create_model("prob_unet", in_channels=3, num_classes=3, latent_dim=4, **TINY).eval()
    config = json.loads(json.dumps(model.config))
    assert config["name"] == "prob_unet" and config["latent_dim"] == 4
    assert create_model(**config).config == model.config

    loaded = model_from_file(save_weights(model, tmp_path / "prob_unet.safetensors"))
    assert isinstance(loaded, ProbUNet) and not loaded.training
    image = _image()
    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    mask = _mask(2, 32, 32, 3)
    with torch.no_grad():
        assert torch.equal(loaded(image, z=z), model(image, z=z))
        assert torch.equal(loaded(image), model(image))
        assert torch.equal(
            loaded.sample(image, 2, torch.Generator().manual_seed(4)),
            model.sample(image, 2, torch.Generator().manual_seed(4)),
        )
        assert torch.equal(loaded.elbo_terms(image, mask)["kl"], model.elbo_terms(image, mask)["kl"])
