"""CIMD's network and objective: the ambiguity networks train (and stay fixed in faithful mode), the
KL between posterior and prior falls, sampling is reproducible by seed and diverse."""

from __future__ import annotations

import pytest
import torch

from pathseg.diffusion import NoiseSchedule, Sampler, SamplerConfig
from pathseg.methods.ambiguous import CIMDNetwork, cimd_loss, mask_to_signal, sample_masks, signal_to_mask

SIZE = 16


def tiny(faithful: bool = False) -> CIMDNetwork:
    torch.manual_seed(0)
    return CIMDNetwork(
        latent_dim=2, base_channels=8, channel_mults=(1, 2), encoder_filters=(8, 16), faithful=faithful
    )


def two_annotator_batch(generator: torch.Generator, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright square on a dark image; annotator 0 draws the square, annotator 1 a larger one."""
    image = torch.full((batch, 3, SIZE, SIZE), -0.8)
    image[:, :, 5:11, 5:11] = 0.8
    mask = torch.zeros(batch, SIZE, SIZE, dtype=torch.long)
    wide = torch.rand(batch, generator=generator) < 0.5
    mask[:, 5:11, 5:11] = 1
    mask[wide, 3:13, 3:13] = 1
    return image + 0.05 * torch.randn(image.shape, generator=generator), mask


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if v.is_floating_point())


def train(model: CIMDNetwork, steps: int, kl_weight: float) -> list[float]:
    schedule = NoiseSchedule.named("linear", 100)
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    kls = []
    for _ in range(steps):
        image, mask = two_annotator_batch(generator)
        loss, logs = cimd_loss(model, image, mask, schedule, kl_weight, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        kls.append(logs["kl"])
    return kls


def test_prior_and_posterior_are_trained_and_the_kl_falls() -> None:
    torch.set_num_threads(1)
    model = tiny()
    prior, posterior, denoiser = (
        snapshot(model.prior_net),
        snapshot(model.posterior_net),
        snapshot(model.denoiser),
    )
    kls = train(model, 60, kl_weight=1.0)
    assert changed(prior, model.prior_net) and changed(posterior, model.posterior_net)
    assert changed(denoiser, model.denoiser)
    assert sum(kls[-10:]) / 10 < 0.5 * sum(kls[:10]) / 10, kls


def test_faithful_mode_keeps_the_ambiguity_networks_at_their_random_weights() -> None:
    model = tiny(faithful=True)
    prior, posterior, denoiser = (
        snapshot(model.prior_net),
        snapshot(model.posterior_net),
        snapshot(model.denoiser),
    )
    train(model, 5, kl_weight=1e-3)
    assert not changed(prior, model.prior_net) and not changed(posterior, model.posterior_net)
    assert changed(denoiser, model.denoiser)
    assert model.prior_net.in_channels == 2  # the release's prior input: image channel 0 + eps_hat


def test_mask_signal_round_trip() -> None:
    mask = torch.tensor([[[0, 1], [255, 1]]])
    signal = mask_to_signal(mask, 1)
    assert signal.tolist() == [[[[-1.0, 1.0], [-1.0, 1.0]]]]
    assert signal_to_mask(signal).tolist() == [[[0, 1], [0, 1]]]
    three = mask_to_signal(torch.tensor([[[0, 2]]]), 3)
    assert three[0, :, 0, 1].tolist() == [-1.0, -1.0, 1.0] and signal_to_mask(three).tolist() == [[[0, 2]]]


@pytest.mark.parametrize("faithful", [False, True])
def test_sampling_is_reproducible_by_seed(faithful: bool) -> None:
    model = tiny(faithful).eval()
    sampler = Sampler(
        NoiseSchedule.named("linear", 100), "epsilon", SamplerConfig(steps=5), learned_variance=True
    )
    image, _ = two_annotator_batch(torch.Generator().manual_seed(0), batch=2)
    a, soft_a = sample_masks(model, image, 4, sampler, torch.Generator().manual_seed(7))
    b, soft_b = sample_masks(model, image, 4, sampler, torch.Generator().manual_seed(7))
    c, _ = sample_masks(model, image, 4, sampler, torch.Generator().manual_seed(8))
    assert a.shape == (4, 2, SIZE, SIZE) and soft_a.shape == (2, SIZE, SIZE)
    assert torch.equal(a, b) and torch.equal(soft_a, soft_b) and not torch.equal(a, c)
    assert torch.equal(soft_a, (a > 0).float().mean(dim=0))


def test_the_x0_objective_learns_the_mask_from_the_image() -> None:
    """With prediction="sample" the network's mean output is the mask itself: after a short
    training, from pure noise at the last timestep, it outlines the square the image shows."""
    torch.set_num_threads(1)
    model = tiny()
    schedule = NoiseSchedule.named("cosine", 100)
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        image, mask = two_annotator_batch(generator)
        loss, _ = cimd_loss(model, image, mask, schedule, 1.0, generator=generator, prediction="sample")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    image, _ = two_annotator_batch(generator, batch=4)
    with torch.no_grad():
        z = model.prior(image).mean
        noise = torch.randn((4, 1, SIZE, SIZE), generator=generator)
        t = torch.full((4,), 99)
        x0_hat = model(torch.cat([noise, image], dim=1), t, z)[:, :1]
    inside, outside = x0_hat[:, 0, 6:10, 6:10], x0_hat[:, 0, :2, :]
    assert inside.mean() > 0.5 and outside.mean() < -0.5, (inside.mean(), outside.mean())


def test_faithful_mode_refuses_the_x0_objective() -> None:
    image, mask = two_annotator_batch(torch.Generator().manual_seed(0), batch=2)
    with pytest.raises(ValueError, match="epsilon"):
        cimd_loss(tiny(faithful=True), image, mask, NoiseSchedule.named("linear", 100), prediction="sample")
