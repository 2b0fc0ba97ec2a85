"""Ambiguous segmentation (CIMD): a diffusion segmenter that samples many plausible masks.

``network``: the denoiser with its prior and posterior over z, the training objective, sampling.
"""

from pathseg.methods.ambiguous.network import (
    CIMDNetwork,
    cimd_loss,
    mask_to_signal,
    sample_masks,
    signal_to_mask,
)

__all__ = ["CIMDNetwork", "cimd_loss", "mask_to_signal", "sample_masks", "signal_to_mask"]
