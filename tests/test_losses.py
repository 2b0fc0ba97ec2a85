import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from pathseg.errors import ConfigError
from pathseg.losses import build_loss, cross_entropy, focal_loss, soft_dice_loss


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
