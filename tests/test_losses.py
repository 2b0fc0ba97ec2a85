import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from pathseg.errors import ConfigError
from pathseg.losses import build_loss, cross_entropy, focal_loss, soft_dice_loss, structural_loss


def random_batch(seed: int = 0, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 6, 5, generator=g, requires_grad=True)
    target = torch.randint(0, classes, (2, 6, 5), generator=g)
    return logits, target


def test_cross_entropy_matches_torch_and_ignores_pixels():
    logits, target = random_batch()
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(cross_entropy(logits, target), expected)


def test_all_ignored_gives_zero_with_a_gradient():
    logits, target = random_batch()
    target[:] = 255
    for loss in (cross_entropy, focal_loss, soft_dice_loss):
        value = loss(logits, target)
        value.backward()
        assert value.detach().item() == pytest.approx(0.0, abs=1e-6)
        assert logits.grad is not None


def test_soft_dice_matches_monai_batch_dice():
    logits, target = random_batch(1)
    reference = DiceLoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    torch.testing.assert_close(soft_dice_loss(logits, target), reference(logits, target.unsqueeze(1)))


def test_soft_dice_does_not_see_ignored_pixels():
    logits, target = random_batch(2)
    target[:, 0] = 255
    changed = logits.detach().clone()
    changed[:, :, 0] += 10.0  # only ignored pixels change
    torch.testing.assert_close(soft_dice_loss(logits, target), soft_dice_loss(changed, target))


def test_focal_reduces_to_ce_at_gamma_zero_and_hand_value_at_gamma_two():
    logits, target = random_batch(3)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    one_logits = torch.tensor([[[[2.0]], [[0.0]]]])  # p(class 0) = e^2 / (e^2 + 1)
    p = torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1)
    expected = -((1 - p) ** 2) * torch.log(p)
    torch.testing.assert_close(focal_loss(one_logits, torch.zeros(1, 1, 1, dtype=torch.long)), expected)


def test_build_loss_sums_weighted_terms_and_rejects_unknown():
    logits, target = random_batch(4)
    combined = build_loss({"ce": 1.0, "dice": 0.5})(logits, target)
    torch.testing.assert_close(combined, cross_entropy(logits, target) + 0.5 * soft_dice_loss(logits, target))
    with pytest.raises(ConfigError, match="unknown loss term"):
        build_loss({"dcie": 1.0})


def _structural_reference(logits: torch.Tensor, target: torch.Tensor, beta=0.1, c=0.01, faithful=False):
    """The SS loss written out with numpy from the GenSelfDiff description (no ignored pixels)."""
    import numpy as np

    p = torch.softmax(logits.detach().double(), 1).numpy()
    y = np.eye(p.shape[1])[target.numpy()].transpose(0, 3, 1, 2)
    ce_map = -(y * np.log(p)).sum(1, keepdims=True)
    total, count = 0.0, 0.0
    e_all, f_all = np.zeros_like(p), np.zeros_like(p)
    for b in range(p.shape[0]):
        for k in range(p.shape[1]):
            zy = (y[b, k] - y[b, k].mean() + c) / (y[b, k].std(ddof=1) + c)
            zp = (p[b, k] - p[b, k].mean() + c) / (p[b, k].std(ddof=1) + c)
            e = np.abs(zy - zp)
            f = (e > beta * e.max()).astype(float)
            e_all[b, k], f_all[b, k] = e, f
            total += (e * f * ce_map[b, 0]).sum()
            count += f.sum()
    if faithful:
        return (e_all * f_all).sum() * ce_map.mean() / f_all.sum()
    return total / count


def test_structural_loss_matches_a_direct_implementation_in_both_modes():
    logits, target = random_batch(seed=3)
    ours = structural_loss(logits, target)
    assert ours.item() == pytest.approx(_structural_reference(logits, target), rel=1e-5)
    faithful = structural_loss(logits, target, faithful=True)
    assert faithful.item() == pytest.approx(_structural_reference(logits, target, faithful=True), rel=1e-5)
    assert faithful.item() != pytest.approx(ours.item(), rel=1e-3)
    ours.backward()
    assert logits.grad.abs().sum() > 0


def test_structural_loss_is_zero_for_a_confident_correct_prediction_and_ignores_pixels():
    _, target = random_batch(seed=4)
    confident = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40
    assert structural_loss(confident, target).item() == pytest.approx(0.0, abs=1e-6)
    logits, target = random_batch(seed=5)
    target = target.clone()
    target[:, :2] = 255
    changed = logits.detach().clone()
    changed[:, :, :2] = torch.randn_like(changed[:, :, :2]) * 5
    assert structural_loss(changed, target).item() == pytest.approx(structural_loss(logits, target).item())


def test_genselfdiff_loss_terms_are_available():
    logits, target = random_batch(seed=6)
    combined = build_loss({"ss": 1.0, "focal": 1.0}, focal_gamma=2.0)(logits, target)
    expected = structural_loss(logits, target) + focal_loss(logits, target, gamma=2.0)
    assert combined.item() == pytest.approx(expected.item(), rel=1e-6)


def _layered_targets(seed: int, layers: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 3, 6, 5, generator=g, requires_grad=True)
    targets = torch.randint(0, 3, (4, layers, 6, 5), generator=g)
    targets[torch.rand(targets.shape, generator=g) < 0.3] = 255  # scattered ignored pixels (glass)
    return logits, targets


def test_multi_layer_cross_entropy_is_the_weighted_sum_of_per_layer_ce():
    from pathseg.losses import multi_layer_cross_entropy

    logits, targets = _layered_targets(7)
    weights = [0.6, 0.3, 0.1]
    expected = sum(
        w * F.cross_entropy(logits, targets[:, i], ignore_index=255) for i, w in enumerate(weights)
    )
    value = multi_layer_cross_entropy(logits, targets, weights)
    torch.testing.assert_close(value, expected)
    # Each layer's CE is a mean over its own labelled pixels, not over the pooled layers.
    pooled = F.cross_entropy(
        logits.repeat(3, 1, 1, 1), targets.transpose(0, 1).reshape(12, 6, 5), ignore_index=255
    )
    assert value.item() != pytest.approx(pooled.item(), rel=1e-3)
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_multi_layer_cross_entropy_all_ignored_layer_adds_nothing_and_faithful_divides_by_batch():
    from pathseg.losses import multi_layer_cross_entropy

    logits, targets = _layered_targets(8, layers=2)
    targets[:, 1] = 255
    value = multi_layer_cross_entropy(logits, targets, [0.7, 0.3])
    assert torch.isfinite(value)
    torch.testing.assert_close(value, 0.7 * F.cross_entropy(logits, targets[:, 0], ignore_index=255))
    faithful = multi_layer_cross_entropy(logits, targets, [0.7, 0.3], faithful=True)
    torch.testing.assert_close(faithful, value / 4)
    faithful.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="one mask per weight"):
        multi_layer_cross_entropy(logits, targets, [1.0, 0.5, 0.2])
    with pytest.raises(ValueError, match="one mask per weight"):
        multi_layer_cross_entropy(logits, targets[:, 0], [1.0])
