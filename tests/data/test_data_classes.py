"""ClassMap: construction from config, encoding raw masks, refusing unknown values."""

from __future__ import annotations

import numpy as np
import pytest

from pathseg.data.classes import AnyOf, ClassMap
from pathseg.errors import ConfigError, DataError

GLAS = ClassMap(names=("background", "gland"), values=(0, 255))
WSSS = ClassMap(names=("tumour", "stroma", "normal", "background"), values=(0, 1, 2, 3))


def test_from_config_mapping_and_list() -> None:
    assert ClassMap.from_config({"background": 0, "gland": 255}) == GLAS
    assert ClassMap.from_config(["tumour", "stroma", "normal", "background"]) == WSSS


def test_from_config_structured_with_ignore_and_alternatives() -> None:
    cm = ClassMap.from_config(
        {"classes": {"bg": 0, "fg": [255, 1]}, "ignore_values": [128], "ignore_index": -100}
    )
    assert cm.values == (0, AnyOf(255, 1))
    assert cm.ignore_values == (128,) and cm.ignore_index == -100
    assert cm.canonical_values == (0, 255)


def test_from_config_colours() -> None:
    cm = ClassMap.from_config({"tumour": "#ff0000", "stroma": [[0, 255, 0]], "other": ["#0000ff", "#000000"]})
    assert cm.is_colour
    assert cm.values == ((255, 0, 0), (0, 255, 0), AnyOf((0, 0, 255), (0, 0, 0)))
    assert cm.palette()[:2] == [(255, 0, 0), (0, 255, 0)]


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"a": 0, "b": 0}, "given to both 'a' and 'b'"),
        ({"a": 0, "b": "#zz0000"}, "cannot read stored value"),
        ({"a": 0, "b": "#ff0000"}, "mixes integer values and RGB colours"),
        ({"a": -1}, "must not be negative"),
        ({"a": 0, "b": []}, "empty list"),
        ([1, 2], "must hold class names"),
        ("gland", "list of names or a mapping"),
        ({"classes": ["a"], "bogus": 1}, "unknown keys ['bogus']"),
        ({"classes": ["a", "b"], "ignore_index": 1}, "collides with class 'b'"),
        ({"classes": {"a": 0, "b": 1}, "ignore_values": [1]}, "both ignored and class 'b'"),
        ([], "at least one class"),
        (["a", "a"], "unique"),
    ],
)
def test_from_config_errors(obj: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ClassMap.from_config(obj)
    assert fragment in str(exc.value)


def test_names_and_values_length_must_match() -> None:
    with pytest.raises(ConfigError, match="2 names but 1 values"):
        ClassMap(names=("a", "b"), values=(0,))


def test_encode_glas_values() -> None:
    raw = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    out = GLAS.encode(raw, "m.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 1], [1, 0]])


@pytest.mark.parametrize("foreground", [255, 1])
def test_binary_accepts_0_255_and_0_1(foreground: int) -> None:
    cm = ClassMap.binary()
    raw = np.array([[0, foreground]], dtype=np.uint8)
    np.testing.assert_array_equal(cm.encode(raw, "m.png"), [[0, 1]])
    assert cm.describe() == "background=0, foreground=255|1"


def test_binary_with_single_foreground_refuses_the_other() -> None:
    cm = ClassMap.binary(foreground_values=(255,), names=("background", "gland"))
    with pytest.raises(DataError, match=r"values \[1\]"):
        cm.encode(np.array([[0, 1]], dtype=np.uint8), "m.png")


def test_unknown_values_message_names_file_and_values() -> None:
    raw = np.array([[0, 7, 9], [255, 9, 0]], dtype=np.uint8)
    with pytest.raises(DataError) as exc:
        GLAS.encode(raw, "masks/train_3.png")
    assert str(exc.value) == (
        "masks/train_3.png: mask has values [7, 9] that are not in the class map "
        "(known: background=0, gland=255)"
    )


def test_unknown_values_list_is_capped() -> None:
    raw = np.arange(30, dtype=np.uint8).reshape(5, 6)
    with pytest.raises(DataError, match=r"\[1, 2, 3, 4, 5, 6, 7, 8, 9, 10\] and 19 more"):
        ClassMap.binary(foreground_values=(255,)).encode(raw, "m.png")


def test_ignore_values_become_ignore_index() -> None:
    cm = ClassMap(names=("a", "b"), values=(0, 1), ignore_values=(128,), ignore_index=255)
    out = cm.encode(np.array([[0, 128, 1]], dtype=np.uint8), "m.png")
    np.testing.assert_array_equal(out, [[0, 255, 1]])
    assert "ignored: 128" in cm.describe()


def test_encode_uint16_and_int32() -> None:
    cm = ClassMap(names=("a", "b", "c"), values=(0, 1000, 65535))
    raw16 = np.array([[0, 1000, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(cm.encode(raw16, "m.png"), [[0, 1, 2]])
    np.testing.assert_array_equal(cm.encode(raw16.astype(np.int32), "m.tif"), [[0, 1, 2]])
    with pytest.raises(DataError, match=r"values \[70000\]"):
        cm.encode(np.array([[0, 70000]], dtype=np.int32), "m.tif")


def test_encode_colour_mask() -> None:
    cm = ClassMap(
        names=("bg", "red", "blue"), values=((0, 0, 0), (255, 0, 0), AnyOf((0, 0, 255), (0, 0, 254)))
    )
    raw = np.array([[[0, 0, 0], [255, 0, 0], [0, 0, 254], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(cm.encode(raw, "c.png"), [[0, 1, 2, 2]])
    raw[0, 0] = (1, 2, 3)
    with pytest.raises(DataError, match=r"c.png: mask has values \[\(1, 2, 3\)\]"):
        cm.encode(raw, "c.png")


def test_grey_mask_with_colour_map_reads_as_grey_colours() -> None:
    cm = ClassMap(names=("black", "white"), values=((0, 0, 0), (255, 255, 255)))
    np.testing.assert_array_equal(cm.encode(np.array([[0, 255]], dtype=np.uint8), "g.png"), [[0, 1]])


def test_colour_mask_with_integer_map_is_an_error() -> None:
    raw = np.zeros((2, 2, 3), dtype=np.uint8)
    raw[0, 0] = (255, 0, 0)
    with pytest.raises(
        DataError, match=r"m\.png: mask is an RGB colour image but the class map uses integer"
    ):
        GLAS.encode(raw, "m.png")


def test_decode_round_trip() -> None:
    cm = ClassMap.binary()
    labels = np.array([[0, 1, 1]])
    np.testing.assert_array_equal(cm.decode(labels), [[0, 255, 255]])
    with pytest.raises(ValueError, match="not class indices"):
        cm.decode(np.array([[2]]))


def test_palette_has_one_colour_per_class_and_black_background() -> None:
    pal = WSSS.palette()
    assert len(pal) == 4 and pal[3] == (0, 0, 0)
    assert len(set(pal)) == 4


def test_encode_large_mask_is_fast() -> None:
    import time

    raw = np.random.default_rng(0).choice(np.array([0, 255], dtype=np.uint8), size=(2048, 2048))
    start = time.perf_counter()
    GLAS.encode(raw, "big.png")
    assert time.perf_counter() - start < 1.0
