"""Segmentation losses with a real ignore index.

All losses take raw logits ``(B, K, H, W)`` and integer targets ``(B, H, W)``; pixels equal to
``ignore_index`` contribute nothing (neither to the numerator nor to the normaliser), which is what
weak or partial labels need. MONAI's Dice/focal losses expect one-hot targets and have no ignore
index, hence these small implementations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from pathseg.errors import ConfigError

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int = 255, class_weights: Tensor | None = None
) -> Tensor:
    """Mean cross-entropy over the labelled pixels (0 when every pixel is ignored)."""
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index)


def soft_dice_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, smooth: float = 1.0) -> Tensor:
    """1 - mean over classes of the soft Dice, pooled over the batch.

    Pooling over the whole batch (rather than per image) keeps the loss defined for crops that do
    not contain a class; ``smooth`` then only matters when a class is absent from the batch.
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()
    probs = logits.float().softmax(dim=1) * valid
    one_hot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


def focal_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, mean over labelled pixels."""
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    log_probs = F.log_softmax(logits.float(), dim=1)
    safe_target = target.clamp(0, logits.shape[1] - 1).unsqueeze(1)
    log_p_true = log_probs.gather(1, safe_target).squeeze(1)[valid]
    return (-((1 - log_p_true.exp()) ** gamma) * log_p_true).mean()


def multi_layer_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    weights: list[float] | tuple[float, ...],
    ignore_index: int = 255,
    faithful: bool = False,
) -> Tensor:
    """Multi-layer pseudo-supervision (MLPS): ``sum_l w_l * CE(logits, targets[:, l])``.

    ``targets`` is ``(B, L, H, W)``: one pseudo mask per CAM layer, ignored pixels (e.g. glass)
    equal to ``ignore_index``. Each CE is the mean over that mask's labelled pixels. The MLPS code
    divides each pixel-mean CE by the batch size once more; ``faithful=True`` reproduces that
    (it only rescales the loss, i.e. the learning rate, by ``1 / B``).
    """
    if targets.ndim != 4 or targets.shape[1] != len(weights):
        raise ValueError(
            f"targets must be (B, {len(weights)}, H, W) (one mask per weight), got {tuple(targets.shape)}"
        )
    total = logits.new_zeros((), dtype=torch.float32)
    for layer, weight in enumerate(weights):
        total = total + weight * cross_entropy(logits, targets[:, layer], ignore_index)
    return total / logits.shape[0] if faithful else total


def _masked_zscore(values: Tensor, valid: Tensor, smooth: float) -> Tensor:
    """``(v - mean + smooth) / (std + smooth)`` per image and channel over the valid pixels (unbiased std)."""
    count = valid.sum(dim=(2, 3), keepdim=True).clamp(min=2)
    mean = (values * valid).sum(dim=(2, 3), keepdim=True) / count
    var = ((values - mean) ** 2 * valid).sum(dim=(2, 3), keepdim=True) / (count - 1)
    return (values - mean + smooth) / (var.sqrt() + smooth)


def structural_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    beta: float = 0.1,
    smooth: float = 0.01,
    faithful: bool = False,
) -> Tensor:
    """Structural-similarity ("SS") loss of GenSelfDiff-HIS: cross-entropy where the structures disagree.

    Per image and class, the one-hot target and the softmax output are z-normalised over the image;
    ``e = |z_target - z_pred|`` marks pixels whose local structure the prediction gets wrong, and only
    pixels with ``e > beta * max(e)`` (per image and class) count. Canonical mode (default) weights each
    such pixel's cross-entropy by ``e``: ``sum(e * f * ce) / sum(f)``. ``faithful=True`` reproduces the
    seed code, which multiplies ``sum(e * f) / sum(f)`` by the *batch-mean* cross-entropy instead.
    Ignored pixels are left out of the statistics and the sums.
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()
    if not valid.any():
        return logits.sum() * 0.0
    log_probs = F.log_softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    error = (_masked_zscore(one_hot, valid, smooth) - _masked_zscore(log_probs.exp(), valid, smooth)).abs()
    error = error * valid
    peak = error.amax(dim=(2, 3), keepdim=True)
    selected = (error > beta * peak).float() * valid
    pixel_ce = -(one_hot * log_probs).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    denominator = selected.sum().clamp(min=1.0)
    if faithful:
        batch_ce = (pixel_ce * valid).sum() / valid.sum()
        return (error * selected).sum() * batch_ce / denominator
    return (error * selected * pixel_ce).sum() / denominator


def structural_loss_faithful(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """:func:`structural_loss` as the GenSelfDiff code computes it (batch-scalar cross-entropy)."""
    return structural_loss(logits, target, ignore_index, faithful=True)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce": cross_entropy,
    "dice": soft_dice_loss,
    "focal": focal_loss,
    "ss": structural_loss,
    "ss_faithful": structural_loss_faithful,
}


def register_loss(name: str, fn: Callable[..., Tensor]) -> None:
    """Make a loss term available to :func:`build_loss`: ``fn(logits, target, ignore_index=...)``."""
    LOSSES[name] = fn


def build_loss(
    terms: Mapping[str, float],
    ignore_index: int = 255,
    focal_gamma: float = 2.0,
    class_weights: list[float] | None = None,
) -> LossFn:
    """A weighted sum of named loss terms, e.g. ``{"ce": 1.0, "dice": 1.0}``.

    GenSelfDiff-HIS fine-tunes with ``{"ss": 1.0, "focal": 1.0}`` and ``focal_gamma=2``
    (``ss_faithful`` for the seed code's variant of the SS term).
    """
    unknown = sorted(set(terms) - set(LOSSES))
    if unknown:
        raise ConfigError(f"unknown loss term(s) {unknown}; known: {sorted(LOSSES)}")
    if not terms:
        raise ConfigError("loss.terms is empty; give at least one of " + ", ".join(sorted(LOSSES)))
    weights_tensor = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for name, weight in terms.items():
            if weight == 0:
                continue
            if name == "ce":
                cw = weights_tensor.to(logits.device) if weights_tensor is not None else None
                value = cross_entropy(logits, target, ignore_index, cw)
            elif name == "focal":
                value = focal_loss(logits, target, ignore_index, focal_gamma)
            else:
                value = LOSSES[name](logits, target, ignore_index=ignore_index)
            total = total + weight * value
        return total

    return loss
