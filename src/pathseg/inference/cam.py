"""Grad-CAM from any named layers of a classifier, for a whole batch at once.

The MLPS code runs one image at a time and one forward + backward pass per class and per layer.
Here one forward pass per batch records every requested layer (forward hooks) and one backward
pass per class gives the gradients of all layers together: for B images, C classes and L layers
that is 1 forward and C backward passes instead of B * C * L of each. The images of a batch do not
interact (the model is in eval mode), so the gradient of ``sum_b logit_{b,c}`` with respect to
image b's activations is exactly the gradient of its own logit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathseg.errors import ConfigError

__all__ = ["grad_cams", "layer_names"]


def layer_names(model: nn.Module, depth: int = 2) -> list[str]:
    """Names of the model's modules down to ``depth`` dots (what ``grad_cams`` accepts, shortened)."""
    return [name for name, _ in model.named_modules() if name and name.count(".") < depth]


def grad_cams(
    model: nn.Module, images: Tensor, layers: Sequence[str], size: tuple[int, int] | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Grad-CAM of every class from every layer in ``layers``.

    For layer activations ``A`` (``K`` channels) and class logit ``y_c``:
    ``CAM_c = sum_k mean_hw(d y_c / d A_k) * A_k``, with no ReLU (MLPS keeps the sign and
    normalises later). Maps are resized bilinearly to ``size`` (default: the input size).

    Args:
        model: a classifier ``(B, 3, H, W) -> logits (B, C)``; put it in eval mode first.
        images: the batch, already normalised as the model expects.
        layers: module names as in ``model.named_modules()``, e.g. ``"encoder.layer3"``.

    Returns:
        ``({layer: (B, C, H, W) float32}, logits (B, C))``.
    """
    if model.training:
        raise ValueError("grad_cams needs the model in eval mode (dropout and batch statistics off)")
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules or not name]
    if unknown:
        raise ConfigError(
            f"unknown CAM layer(s) {unknown}; some layer names of this model: {', '.join(layer_names(model))}"
        )
    if not layers:
        raise ConfigError("grad_cams: give at least one layer")
    recorded: dict[str, Tensor] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            recorded[name] = output

        return hook

    handles = [modules[name].register_forward_hook(recorder(name)) for name in layers]
    try:
        with torch.enable_grad(), torch.autocast(images.device.type, enabled=False):
            logits = model(images.float())
            if logits.ndim != 2:
                raise ValueError(f"grad_cams expects image-level logits (B, C), got {tuple(logits.shape)}")
            activations = [recorded[name] for name in layers]
            per_class: list[list[Tensor]] = [[] for _ in layers]
            num_classes = logits.shape[1]
            for c in range(num_classes):
                grads = torch.autograd.grad(logits[:, c].sum(), activations, retain_graph=c < num_classes - 1)
                for i, (act, grad) in enumerate(zip(activations, grads, strict=True)):
                    weights = grad.mean(dim=(2, 3), keepdim=True)
                    per_class[i].append((weights * act).sum(dim=1).detach())
    finally:
        for handle in handles:
            handle.remove()
    size = size or tuple(images.shape[-2:])
    cams = {}
    for name, maps in zip(layers, per_class, strict=True):
        stacked = torch.stack(maps, dim=1).float()
        cams[name] = F.interpolate(stacked, size=size, mode="bilinear", align_corners=False)
    return cams, logits.detach().float()
