"""pathseg: label-efficient segmentation of histopathology images."""

__version__ = "0.1.0"
