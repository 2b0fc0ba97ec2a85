"""Nucleus instance segmentation: a HoVer-style head on pathseg's networks (``pathseg nuclei``),
and nucleus-aware pretraining by unpaired mask <-> H&E translation (UNITPathSSL).

* ``config``       NucleiConfig (data folders, model, loss weights, post-processing, windows, train);
                   NucleusPretrainConfig (pseudo masks, translator, losses)
* ``data``         NucleusDataset: crops of images and instance maps -> nucleus mask + h/v maps
* ``loss``         hover_loss: CE + Dice on nucleus pixels, MSE + MSGE on the h/v maps
* ``train``        train(): split by image, fit, whole-image validation AJI, test outputs; predict_nuclei
* ``predict``      write_prediction (instance PNG, QuPath GeoJSON, per-nucleus CSV, overlay), predict_folder
* ``pseudo_masks`` nucleus statistics fitted to labelled instances; synthetic instance maps from them
* ``translator``   mask images, the Translator (G_AB, style encoder, G_BA, D_A, D_B) and its objective
* ``pretrain``     pretrain(): fit statistics -> translator training -> G_BA exported as a segmenter
"""

from pathseg.methods.nuclei.config import NucleiConfig, NucleusPretrainConfig
from pathseg.methods.nuclei.pretrain import pretrain
from pathseg.methods.nuclei.train import load_nucleus_run, predict_nuclei, score_samples, train

__all__ = [
    "NucleiConfig",
    "NucleusPretrainConfig",
    "load_nucleus_run",
    "predict_nuclei",
    "pretrain",
    "score_samples",
    "train",
]
