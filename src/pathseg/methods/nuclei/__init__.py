"""Nucleus instance segmentation: a HoVer-style head on pathseg's networks (``pathseg nuclei``).

* ``config``  NucleiConfig (data folders, model, loss weights, post-processing, windows, train)
* ``data``    NucleusDataset: crops of images and instance maps -> nucleus mask + h/v maps
* ``loss``    hover_loss: CE + Dice on nucleus pixels, MSE + MSGE on the h/v maps
* ``train``   train(): split by image, fit, whole-image validation AJI, test outputs; predict_nuclei
* ``predict`` write_prediction (instance PNG, QuPath GeoJSON, per-nucleus CSV, overlay), predict_folder
"""

from pathseg.methods.nuclei.config import NucleiConfig
from pathseg.methods.nuclei.train import load_nucleus_run, predict_nuclei, score_samples, train

__all__ = ["NucleiConfig", "load_nucleus_run", "predict_nuclei", "score_samples", "train"]
