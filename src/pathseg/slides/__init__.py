"""Whole-slide images: read any slide, find its tissue, segment it in bounded memory, export.

* ``reader``      open_slide / Slide: OpenSlide, tiffslide or a plain image behind one interface
* ``tissue``      detect_tissue -> TissueMask (low resolution; PNG + QuPath GeoJSON)
* ``tiles``       annotated slide -> images/ + masks/ training tiles (unannotated = ignore)
* ``blend``       TileGrid, StripBlender: overlap blending with one tile in memory
* ``predict``     predict_slide: tissue tiles -> network -> blended labels on disk -> outputs (resumable)
* ``ometiff``, ``vectorize``, ``summary``: pyramidal OME-TIFF, QuPath GeoJSON, area CSV, chunk by chunk
* ``synthetic``   write_synthetic_slide: pyramidal test slides of any size from the tissue generator
"""

from pathseg.slides.reader import Slide, open_slide

__all__ = ["Slide", "open_slide"]
