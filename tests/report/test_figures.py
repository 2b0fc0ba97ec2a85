"""Overlay figures: object outlines must show where objects are separated."""

from __future__ import annotations

import numpy as np

from pathseg.report.figures import outline_objects


def test_outline_marks_each_object_border_and_the_seam_between_touching_objects() -> None:
    rgb = np.full((8, 10, 3), 100, np.uint8)
    instances = np.zeros((8, 10), np.int32)
    instances[2:6, 1:5] = 1
    instances[2:6, 5:9] = 2  # touches object 1 along columns 4 | 5
    out = outline_objects(rgb, instances, colour=(255, 255, 255), edge=(0, 0, 0))
    white = (out == 255).all(axis=-1)
    dark = (out == 0).all(axis=-1)
    # Each object's own outer ring of pixels is white, the seam included (both sides of it).
    expected_white = np.zeros_like(white)
    for label in (1, 2):
        region = instances == label
        inner = region.copy()
        inner[1:-1, 1:-1] &= ~(region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:])
        expected_white |= inner & region
    assert (white == expected_white).all()
    assert white[2:6, 4].all() and white[2:6, 5].all()
    # Background pixels next to an object are dark; object interiors and far background untouched.
    assert dark[1, 1:9].all() and dark[6, 1:9].all() and dark[2:6, 0].all() and dark[2:6, 9].all()
    assert (out[3:5, 2:4] == 100).all() and (out[3:5, 6:8] == 100).all()
    assert (out[0, :] == 100).all() and not dark[instances > 0].any()
