"""Whole-image prediction: tiles of the training crop size, blended where they overlap.

MONAI's ``sliding_window_inference`` already does the tiling, padding and Gaussian blending well, so
we wrap it rather than re-implement it. Images smaller than a tile are padded to the tile size and
cropped back, so one code path serves small tiles and large fields of view.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import Tensor, nn

from pathseg.data.transforms import to_tensor

SIZE_MULTIPLE = 32  # every registered network accepts sizes divisible by 32


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image: Tensor,
    tile_size: int,
    overlap: float = 0.25,
    blend: str = "gaussian",
    sw_batch_size: int = 4,
) -> Tensor:
    """Logits ``(K, H, W)`` for one normalised image ``(3, H, W)``."""
    device = next(model.parameters()).device
    batch = image.unsqueeze(0).to(device)
    # A tile no larger than the image (rounded up to the network's size multiple) keeps padding
    # small enough for reflection, which looks like tissue to the network, unlike a constant.
    height, width = image.shape[-2:]
    roi = tuple(min(tile_size, -(-size // SIZE_MULTIPLE) * SIZE_MULTIPLE) for size in (height, width))
    ph, pw = (max(r - s, 0) for r, s in zip(roi, (height, width), strict=True))
    # Reflection needs more pixels than it pads on each side: a tiny image (a few pixels wide) is
    # replicated out to the tile first, and the logits are cropped back to it.
    tiny = -(-ph // 2) >= height or -(-pw // 2) >= width
    if tiny:
        batch = F.pad(batch, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    logits = sliding_window_inference(
        batch,
        roi_size=roi,
        sw_batch_size=sw_batch_size,
        predictor=model,
        overlap=overlap,
        mode=blend,
        padding_mode="reflect",
    )
    if tiny:
        logits = logits[..., ph // 2 : ph // 2 + height, pw // 2 : pw // 2 + width]
    return logits[0].float()


def predict_image(
    model: nn.Module,
    rgb: np.ndarray,
    tile_size: int,
    overlap: float = 0.25,
    blend: str = "gaussian",
    sw_batch_size: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Class map ``(H, W)`` and class probabilities ``(K, H, W)`` for an RGB uint8 image."""
    logits = predict_logits(model, to_tensor(rgb), tile_size, overlap, blend, sw_batch_size)
    probs = logits.softmax(dim=0)
    return probs.argmax(dim=0).cpu().numpy().astype(np.int64), probs.cpu().numpy()
