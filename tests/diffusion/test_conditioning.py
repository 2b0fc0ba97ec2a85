"""Condition inputs, classifier-free guidance and condition dropout, with fake models computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pathseg.diffusion import Condition, Guidance, denoise
from pathseg.errors import ConfigError

W = torch.tensor([0.5, -1.0, 2.0])  # the fake model's weights on the condition vector


class LinearFake:
    """``out = x[:, :1] * (1 + cond @ W) + mean(condition image channels) + t / 1000``, recording calls.

    The output is linear in the condition vector, so the conditional and unconditional outputs
    (and any guided combination of them) can be written down directly.
    """

    def __init__(self, image_channels: int = 0) -> None:
        self.image_channels = image_channels
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, x, t, cond):
        self.calls.append((x.clone(), t.clone(), None if cond is None else cond.clone()))
        out = x[:, :1].clone()
        if cond is not None:
            out = out * (1 + cond @ W).view(-1, 1, 1, 1)
        if self.image_channels:
            out = out + x[:, 1:].mean(dim=(1, 2, 3), keepdim=True)
        return out + t.view(-1, 1, 1, 1) / 1000


def by_hand(x, t, vector=None, image=None):
    """The fake model's output for one explicit condition."""
    out = x.clone()
    if vector is not None:
        out = out * (1 + vector @ W).view(-1, 1, 1, 1)
    if image is not None:
        out = out + image.mean(dim=(1, 2, 3), keepdim=True)
    return out + t.view(-1, 1, 1, 1) / 1000


def inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 4, 4, generator=g)
    t = torch.tensor([10, 500, 999][:batch])
    vector = torch.randn(batch, 3, generator=g)
    image = torch.rand(batch, 2, 4, 4, generator=g)
    return x, t, vector, image


# ---------------------------------------------------------------------------------------------
# Condition


def test_model_input_concatenates_image_channels() -> None:
    x = torch.randn(2, 3, 5, 6)
    image = torch.rand(2, 2, 5, 6, dtype=torch.float64)
    joined = Condition(image=image).model_input(x)
    assert joined.shape == (2, 5, 5, 6)
    assert joined.dtype == x.dtype
    torch.testing.assert_close(joined[:, :3], x, rtol=0, atol=0)
    torch.testing.assert_close(joined[:, 3:], image.float(), rtol=0, atol=0)
    assert Condition().model_input(x) is x
    assert Condition(vector=torch.ones(2, 4)).model_input(x) is x


def test_denoise_hands_concatenated_channels_and_vector_to_the_model() -> None:
    x, t, vector, image = inputs()
    model = LinearFake(image_channels=2)
    out = denoise(model, x, t, Condition(image=image, vector=vector))
    ((seen_x, seen_t, seen_cond),) = model.calls
    assert seen_x.shape == (3, 3, 4, 4)
    torch.testing.assert_close(seen_x[:, 1:], image, rtol=0, atol=0)
    torch.testing.assert_close(seen_cond, vector, rtol=0, atol=0)
    torch.testing.assert_close(seen_t, t, rtol=0, atol=0)
    torch.testing.assert_close(out, by_hand(x, t, vector, image))


def test_denoise_expands_a_scalar_timestep() -> None:
    x = torch.zeros(4, 1, 2, 2)
    model = LinearFake()
    denoise(model, x, torch.tensor(7))
    denoise(model, x, 9)
    assert model.calls[0][1].tolist() == [7, 7, 7, 7]
    assert model.calls[1][1].tolist() == [9, 9, 9, 9]
    assert model.calls[0][2] is None  # no condition: cond is None


@pytest.mark.parametrize("image_shape", [(3, 2, 4, 5), (3, 2, 5, 4), (2, 2, 4, 4)])
def test_mismatched_condition_image_raises(image_shape: tuple[int, ...]) -> None:
    x = torch.zeros(3, 1, 4, 4)
    with pytest.raises(ValueError, match="does not match"):
        Condition(image=torch.zeros(image_shape)).model_input(x)
    with pytest.raises(ValueError, match="does not match"):
        denoise(LinearFake(2), x, torch.zeros(3), Condition(image=torch.zeros(image_shape)))


def test_repeat_stacks_along_the_batch() -> None:
    _, _, vector, image = inputs()
    doubled = Condition(image=image, vector=vector).repeat(2)
    torch.testing.assert_close(doubled.image, torch.cat([image, image]), rtol=0, atol=0)
    torch.testing.assert_close(doubled.vector, torch.cat([vector, vector]), rtol=0, atol=0)
    empty = Condition().repeat(3)
    assert empty.image is None and empty.vector is None


# ---------------------------------------------------------------------------------------------
# guidance in denoise


@pytest.mark.parametrize("guidance", [None, Guidance(scale=1.0), Guidance(scale=1.0, rescale=0.7)])
def test_scale_one_is_a_single_conditional_pass(guidance: Guidance | None) -> None:
    x, t, vector, _ = inputs()
    model = LinearFake()
    out = denoise(model, x, t, Condition(vector=vector), guidance)
    assert len(model.calls) == 1
    assert model.calls[0][0].shape[0] == 3
    torch.testing.assert_close(out, by_hand(x, t, vector))


@pytest.mark.parametrize("scale", [0.0, 2.5, 7.0])
def test_guided_output_is_extrapolation_from_one_paired_pass(scale: float) -> None:
    x, t, vector, _ = inputs()
    model = LinearFake()
    out = denoise(model, x, t, Condition(vector=vector), Guidance(scale=scale))
    ((seen_x, seen_t, seen_cond),) = model.calls
    assert seen_x.shape[0] == 6
    torch.testing.assert_close(seen_x, torch.cat([x, x]), rtol=0, atol=0)
    torch.testing.assert_close(seen_t, torch.cat([t, t]), rtol=0, atol=0)
    torch.testing.assert_close(seen_cond, torch.cat([vector, torch.zeros_like(vector)]), rtol=0, atol=0)
    out_c = by_hand(x, t, vector)
    out_u = by_hand(x, t, torch.zeros_like(vector))
    torch.testing.assert_close(out, out_u + scale * (out_c - out_u))
    if scale == 0.0:
        torch.testing.assert_close(out, x + t.view(-1, 1, 1, 1) / 1000)  # unconditional: 1 + 0 @ W = 1


def test_guidance_uses_the_null_vector() -> None:
    x, t, vector, _ = inputs()
    null = torch.tensor([1.0, 0.0, -0.5])
    model = LinearFake()
    out = denoise(model, x, t, Condition(vector=vector), Guidance(scale=3.0, null_vector=null))
    torch.testing.assert_close(model.calls[0][2][3:], null.expand(3, 3), rtol=0, atol=0)
    out_c, out_u = by_hand(x, t, vector), by_hand(x, t, null.expand(3, 3))
    torch.testing.assert_close(out, out_u + 3.0 * (out_c - out_u))


def test_image_guidance_nulls_only_the_image() -> None:
    """components=("image",): the unconditional half sees the fill value, and the same vector."""
    x, t, vector, image = inputs()
    model = LinearFake(image_channels=2)
    guidance = Guidance(components=("image",), scale=2.0, null_image_value=-2.0)
    out = denoise(model, x, t, Condition(image=image, vector=vector), guidance)
    ((seen_x, _, seen_cond),) = model.calls
    assert seen_x.shape == (6, 3, 4, 4)
    torch.testing.assert_close(seen_x[:3, 1:], image, rtol=0, atol=0)
    assert (seen_x[3:, 1:] == -2.0).all()
    torch.testing.assert_close(seen_cond, torch.cat([vector, vector]), rtol=0, atol=0)
    out_c = by_hand(x, t, vector, image)
    out_u = by_hand(x, t, vector, torch.full_like(image, -2.0))
    torch.testing.assert_close(out, out_u + 2.0 * (out_c - out_u))


def test_rescale_one_matches_conditional_std_per_sample() -> None:
    x, t, vector, _ = inputs(seed=1)
    guided = denoise(LinearFake(), x, t, Condition(vector=vector), Guidance(scale=5.0))
    rescaled = denoise(LinearFake(), x, t, Condition(vector=vector), Guidance(scale=5.0, rescale=1.0))
    out_c = by_hand(x, t, vector)
    dims = (1, 2, 3)
    torch.testing.assert_close(rescaled.std(dim=dims), out_c.std(dim=dims))
    assert not torch.allclose(guided.std(dim=dims), out_c.std(dim=dims), rtol=0.05)  # it did change something
    # the rescaled output is the guided one times a per-sample factor
    factor = out_c.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    torch.testing.assert_close(rescaled, guided * factor)


def test_partial_rescale_blends_rescaled_and_guided() -> None:
    x, t, vector, _ = inputs(seed=2)
    phi = 0.7
    guided = denoise(LinearFake(), x, t, Condition(vector=vector), Guidance(scale=4.0))
    full = denoise(LinearFake(), x, t, Condition(vector=vector), Guidance(scale=4.0, rescale=1.0))
    blended = denoise(LinearFake(), x, t, Condition(vector=vector), Guidance(scale=4.0, rescale=phi))
    torch.testing.assert_close(blended, phi * full + (1 - phi) * guided)


# ---------------------------------------------------------------------------------------------
# nulled and drop_for_training


def test_nulled_replaces_listed_components_for_selected_samples_only() -> None:
    _, _, vector, image = inputs()
    which = torch.tensor([True, False, True])
    both = Guidance(components=("vector", "image"), null_image_value=-2.0)
    out = both.nulled(Condition(image=image, vector=vector), which)
    assert (out.vector[[0, 2]] == 0).all() and (out.image[[0, 2]] == -2.0).all()
    torch.testing.assert_close(out.vector[1], vector[1], rtol=0, atol=0)
    torch.testing.assert_close(out.image[1], image[1], rtol=0, atol=0)

    vector_only = Guidance(components=("vector",), null_image_value=-2.0)
    out = vector_only.nulled(Condition(image=image, vector=vector), which)
    torch.testing.assert_close(out.image, image, rtol=0, atol=0)  # not listed: untouched
    assert (out.vector[[0, 2]] == 0).all()

    image_only = Guidance(components=("image",), null_image_value=0.25)
    out = image_only.nulled(Condition(image=image, vector=vector))  # which=None: every sample
    assert (out.image == 0.25).all()
    torch.testing.assert_close(out.vector, vector, rtol=0, atol=0)


def test_nulled_uses_null_vector_and_leaves_input_intact() -> None:
    _, _, vector, _ = inputs()
    original = vector.clone()
    null = torch.tensor([9.0, 8.0, 7.0], dtype=torch.float64)
    out = Guidance(null_vector=null).nulled(Condition(vector=vector), torch.tensor([False, True, False]))
    assert out.vector.dtype == vector.dtype
    torch.testing.assert_close(out.vector[1], null.float(), rtol=0, atol=0)
    torch.testing.assert_close(out.vector[[0, 2]], vector[[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(vector, original, rtol=0, atol=0)


def test_nulled_without_those_components_is_a_no_op() -> None:
    condition = Condition()
    out = Guidance(components=("vector", "image")).nulled(condition)
    assert out.image is None and out.vector is None


def test_drop_for_training_drops_about_the_given_fraction() -> None:
    batch, p = 4000, 0.25
    vector = torch.ones(batch, 3)
    image = torch.ones(batch, 1, 2, 2)
    guidance = Guidance(components=("vector", "image"), drop_probability=p, null_image_value=-1.0)
    out = guidance.drop_for_training(Condition(image=image, vector=vector), torch.Generator().manual_seed(0))
    dropped_vector = (out.vector == 0).all(dim=1)
    dropped_image = (out.image == -1.0).flatten(1).all(dim=1)
    assert bool(((out.vector == 1).all(dim=1) | dropped_vector).all())
    assert torch.equal(dropped_vector, dropped_image)  # the same samples lose both parts
    assert abs(dropped_vector.sum().item() - p * batch) < 5 * math.sqrt(batch * p * (1 - p))


def test_drop_for_training_reproducible_and_image_only() -> None:
    guidance = Guidance(components=("image",), drop_probability=0.5, null_image_value=-2.0)
    image = torch.ones(64, 1, 2, 2)
    a = guidance.drop_for_training(Condition(image=image), torch.Generator().manual_seed(1))
    b = guidance.drop_for_training(Condition(image=image), torch.Generator().manual_seed(1))
    c = guidance.drop_for_training(Condition(image=image), torch.Generator().manual_seed(2))
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
    assert not torch.equal(a.image, c.image)
    assert 0 < (a.image == -2.0).flatten(1).all(dim=1).sum().item() < 64


def test_zero_drop_probability_returns_condition_unchanged() -> None:
    condition = Condition(vector=torch.ones(5, 3))
    assert Guidance(drop_probability=0.0).drop_for_training(condition) is condition
    empty = Condition()
    assert Guidance(drop_probability=0.5).drop_for_training(empty) is empty


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"components": ("text",)}, "components"),
        ({"components": ("vector", "layout")}, "components"),
        ({"drop_probability": 1.0}, "drop_probability"),
        ({"drop_probability": -0.1}, "drop_probability"),
        ({"rescale": 1.5}, "rescale"),
        ({"rescale": -0.5}, "rescale"),
    ],
)
def test_guidance_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Guidance(**kwargs)
