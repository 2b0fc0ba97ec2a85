"""Ambiguous segmentation (CIMD): a diffusion segmenter that samples many plausible masks.

* ``network``: the denoiser with its trained prior and posterior over z, the objective, sampling;
* ``config``: ``AmbiguousConfig`` (the ``pathseg ambiguous`` run config);
* ``train``: multi-annotator data -> ``engine.fit`` with ``cimd_loss`` -> run folder;
* ``sample``: N masks per image, soft mean, uncertainty maps, panels, GED / HM-IoU / CI.
"""

from pathseg.methods.ambiguous.config import AmbiguousConfig
from pathseg.methods.ambiguous.network import (
    CIMDNetwork,
    cimd_loss,
    mask_to_signal,
    sample_masks,
    signal_to_mask,
)
from pathseg.methods.ambiguous.sample import load_ambiguous_run, sample_images
from pathseg.methods.ambiguous.train import train

__all__ = [
    "AmbiguousConfig",
    "CIMDNetwork",
    "cimd_loss",
    "load_ambiguous_run",
    "mask_to_signal",
    "sample_images",
    "sample_masks",
    "signal_to_mask",
    "train",
]
