"""Mapping between the values stored in mask files and class indices.

Datasets disagree on how they store labels: GlaS uses 0/255, WSSS4LUAD palette indices 0..3,
other sets 0/1 or RGB colours. A :class:`ClassMap` states once which stored value means which
class, and :meth:`ClassMap.encode` turns a raw mask into ``int64`` class indices, refusing
values it does not know instead of guessing.

Per class, ``values[i]`` is one of

* an ``int`` (grey level, palette index, 16-bit id),
* a colour: a tuple of exactly three ints ``(r, g, b)``,
* :class:`AnyOf` ``(v1, v2, ...)``: several stored values that all mean this class (e.g. a
  binary foreground stored as either 255 or 1). The first alternative is the canonical one,
  used when class indices are turned back into stored values.

A separate wrapper type for alternatives keeps the meaning of a bare tuple unambiguous: a
plain tuple is always a colour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from pathseg.errors import ConfigError, DataError

__all__ = ["AnyOf", "ClassMap", "Colour", "StoredValue"]

Colour: TypeAlias = tuple[int, int, int]
StoredValue: TypeAlias = int | Colour

_MAX_LISTED = 10
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")

# Distinct, colour-blind-friendly-ish colours for overlays (Okabe-Ito first, then tab10 extras).
_DEFAULT_COLOURS: tuple[Colour, ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (255, 255, 255),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (214, 39, 40),
    (44, 160, 44),
)


@dataclass(frozen=True, init=False)
class AnyOf:
    """Several stored values that all mean the same class; the first one is canonical."""

    alternatives: tuple[StoredValue, ...]

    def __init__(self, *alternatives: StoredValue) -> None:
        if len(alternatives) == 1 and isinstance(alternatives[0], list):
            alternatives = tuple(alternatives[0])
        object.__setattr__(self, "alternatives", tuple(alternatives))

    def __repr__(self) -> str:
        return "AnyOf(" + ", ".join(repr(v) for v in self.alternatives) + ")"


def _is_colour(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 3
        and all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in value)
    )


def _fmt(value: StoredValue) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(str(int(c)) for c in value) + ")"
    return str(int(value))


def _pack(colours: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> one int64 key per colour, so they can be sorted/searched."""
    c = colours.astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


@dataclass(frozen=True)
class ClassMap:
    """Class names and the stored mask value(s) of each class.

    Class ``i`` is called ``names[i]`` and appears in mask files as ``values[i]``. Pixels with
    a value in ``ignore_values`` become ``ignore_index`` (left out of losses and metrics).
    Either every class uses integers or every class uses colours.
    """

    names: tuple[str, ...]
    values: tuple[StoredValue | AnyOf, ...]
    ignore_values: tuple[StoredValue, ...] = ()
    ignore_index: int = 255

    def __post_init__(self) -> None:
        # Accept lists from callers, store tuples so the map stays hashable.
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "values", tuple(self.values))
        object.__setattr__(self, "ignore_values", tuple(self.ignore_values))
        if not self.names:
            raise ConfigError("class map needs at least one class")
        if len(self.names) != len(self.values):
            raise ConfigError(
                f"class map has {len(self.names)} names but {len(self.values)} values "
                "(one value per class needed)"
            )
        for name in self.names:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"class names must be non-empty strings, got {name!r}")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"class names must be unique, got {list(self.names)}")
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int | np.integer):
            raise ConfigError(f"ignore_index must be an int, got {self.ignore_index!r}")
        if 0 <= self.ignore_index < len(self.names):
            raise ConfigError(
                f"ignore_index {self.ignore_index} collides with class {self.names[self.ignore_index]!r}; "
                f"use a value outside 0..{len(self.names) - 1} (e.g. 255 or -100)"
            )
        kinds: set[str] = set()
        owner: dict[StoredValue, str] = {}
        for name, spec in zip(self.names, self.values, strict=True):
            alts = spec.alternatives if isinstance(spec, AnyOf) else (spec,)
            if not alts:
                raise ConfigError(f"class {name!r} has no values")
            for value in alts:
                kinds.add(self._check_value(value, f"class {name!r}"))
                if value in owner:
                    raise ConfigError(
                        f"stored value {_fmt(value)} is given to both {owner[value]!r} and {name!r}"
                    )
                owner[value] = name
        for value in self.ignore_values:
            kinds.add(self._check_value(value, "ignore_values"))
            if value in owner:
                raise ConfigError(f"stored value {_fmt(value)} is both ignored and class {owner[value]!r}")
        if len(kinds) > 1:
            raise ConfigError("class map mixes integer values and RGB colours; use one kind for all classes")

    @staticmethod
    def _check_value(value: object, where: str) -> str:
        if _is_colour(value):
            if not all(0 <= int(c) <= 255 for c in value):  # type: ignore[union-attr]
                raise ConfigError(f"{where}: colour {value} must have components in 0..255")
            return "colour"
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            if value < 0:
                raise ConfigError(f"{where}: stored value {value} must not be negative")
            return "int"
        raise ConfigError(
            f"{where}: stored value {value!r} must be an int, an (r, g, b) tuple, or AnyOf(...) of those"
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def binary(
        cls,
        foreground_values: Sequence[int] = (255, 1),
        *,
        names: tuple[str, str] = ("background", "foreground"),
        background_value: int = 0,
        ignore_values: Sequence[int] = (),
        ignore_index: int = 255,
    ) -> ClassMap:
        """Two classes: background ``0`` and a foreground stored as any of ``foreground_values``.

        The default accepts both 0/255 and 0/1 masks (the two common binary conventions); the
        first foreground value (255) is the one written back.
        """
        fg = tuple(int(v) for v in foreground_values)
        return cls(
            names=tuple(names),
            values=(int(background_value), AnyOf(*fg) if len(fg) != 1 else fg[0]),
            ignore_values=tuple(int(v) for v in ignore_values),
            ignore_index=ignore_index,
        )

    @classmethod
    def from_config(
        cls,
        obj: Any,
        *,
        ignore_values: Sequence[Any] | None = None,
        ignore_index: int | None = None,
    ) -> ClassMap:
        """Build a class map from plain config data.

        Accepted forms:

        * ``["tumour", "stroma", ...]`` -- names; stored values are 0..K-1.
        * ``{"background": 0, "gland": 255}`` -- name -> stored value. A value may be an int,
          a colour (``"#ff0000"`` or ``[[255, 0, 0]]``), or a list of alternatives
          (``{"gland": [255, 1]}``). A list is therefore always a set of alternatives; write a
          single colour as a hex string or wrap it in another list.
        * ``{"classes": <one of the above>, "ignore_values": [...], "ignore_index": 255}``.
        * an existing :class:`ClassMap` (returned unchanged unless overrides are given).

        Raises:
            ConfigError: on any malformed entry, with the offending name or value.
        """
        if isinstance(obj, ClassMap):
            if ignore_values is None and ignore_index is None:
                return obj
            names, values = obj.names, obj.values
            ign = obj.ignore_values if ignore_values is None else ignore_values
            return cls(names, values, tuple(ign), obj.ignore_index if ignore_index is None else ignore_index)
        if isinstance(obj, Mapping) and "classes" in obj:
            extra = set(obj) - {"classes", "ignore_values", "ignore", "ignore_index"}
            if extra:
                raise ConfigError(
                    f"class map: unknown keys {sorted(extra)} (allowed: classes, ignore_values, ignore_index)"
                )
            if ignore_values is None:
                ignore_values = obj.get("ignore_values", obj.get("ignore", ()))
            if ignore_index is None:
                ignore_index = obj.get("ignore_index")
            obj = obj["classes"]
        if isinstance(obj, Mapping):
            names = tuple(str(k) for k in obj)
            values = tuple(cls._parse_spec(v, f"class {k!r}") for k, v in obj.items())
        elif isinstance(obj, Sequence) and not isinstance(obj, str):
            if not all(isinstance(n, str) for n in obj):
                raise ConfigError(
                    f"class map list must hold class names (strings), got {list(obj)!r}; "
                    "use a mapping name -> value to give stored values"
                )
            names = tuple(obj)
            values = tuple(range(len(names)))
        else:
            raise ConfigError(
                f"class map must be a list of names or a mapping name -> value, got {type(obj).__name__}"
            )
        if ignore_values is None:
            ignore_values = ()
        if isinstance(ignore_values, int | str) or _is_colour(ignore_values):
            ignore_values = [ignore_values]
        ign = tuple(cls._parse_single(v, "ignore_values") for v in ignore_values)
        if ignore_index is None:
            ignore_index = 255
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ConfigError(f"ignore_index must be an int, got {ignore_index!r}")
        return cls(names=names, values=values, ignore_values=ign, ignore_index=ignore_index)

    @staticmethod
    def _parse_single(value: Any, where: str) -> StoredValue:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: stored value {value!r} must be an int or a colour")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            match = _HEX.match(value.strip())
            if match:
                code = match.group(1)
                return (int(code[0:2], 16), int(code[2:4], 16), int(code[4:6], 16))
            try:
                return int(value)
            except ValueError:
                pass
            raise ConfigError(f"{where}: cannot read stored value {value!r} (use an int or '#rrggbb')")
        if isinstance(value, Sequence) and len(value) == 3 and all(isinstance(c, int) for c in value):
            return (int(value[0]), int(value[1]), int(value[2]))
        raise ConfigError(f"{where}: cannot read stored value {value!r} (use an int, '#rrggbb' or [r, g, b])")

    @classmethod
    def _parse_spec(cls, value: Any, where: str) -> StoredValue | AnyOf:
        if isinstance(value, AnyOf):
            return value
        if isinstance(value, list | tuple):
            if not value:
                raise ConfigError(f"{where}: empty list of values")
            # Top-level ints are alternatives; nested 3-lists are colours.
            alts = tuple(cls._parse_single(v, where) for v in value)
            return alts[0] if len(alts) == 1 else AnyOf(*alts)
        return cls._parse_single(value, where)

    # ------------------------------------------------------------------ properties

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def is_colour(self) -> bool:
        """True when classes are identified by RGB colours rather than integers."""
        return _is_colour(self.canonical_values[0])

    @property
    def canonical_values(self) -> tuple[StoredValue, ...]:
        """One stored value per class (the first alternative)."""
        return tuple(v.alternatives[0] if isinstance(v, AnyOf) else v for v in self.values)

    def alternatives(self, index: int) -> tuple[StoredValue, ...]:
        """Every stored value accepted for class ``index``."""
        spec = self.values[index]
        return spec.alternatives if isinstance(spec, AnyOf) else (spec,)

    def describe(self) -> str:
        """``background=0, gland=255|1`` -- used in error messages."""
        parts = [
            f"{name}=" + "|".join(_fmt(v) for v in self.alternatives(i)) for i, name in enumerate(self.names)
        ]
        text = ", ".join(parts)
        if self.ignore_values:
            text += "; ignored: " + ", ".join(_fmt(v) for v in self.ignore_values)
        return text

    def _pairs(self) -> Iterable[tuple[StoredValue, int]]:
        for i in range(self.num_classes):
            for value in self.alternatives(i):
                yield value, i
        for value in self.ignore_values:
            yield value, self.ignore_index

    # ------------------------------------------------------------------ encode / decode

    def encode(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        """Stored mask values -> ``int64`` class indices of shape ``(H, W)``.

        ``raw`` is what :func:`~pathseg.data.io.read_label_image` returns: ``(H, W)`` integers or
        ``(H, W, 3)`` colours. A 2-D mask given to a colour map is read as grey ``(v, v, v)``.

        Raises:
            DataError: (naming ``path``) the mask has values the map does not know, or its
                shape/kind does not fit the map.
        """
        raw = np.asarray(raw)
        if raw.dtype == bool:
            raw = raw.astype(np.uint8)
        if raw.ndim == 3 and raw.shape[-1] == 3 and not self.is_colour:
            raise DataError(
                path,
                "mask is an RGB colour image but the class map uses integer values "
                f"({self.describe()}); give the classes as colours",
            )
        if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[-1] != 3):
            raise DataError(path, f"mask must be (H, W) or (H, W, 3), got shape {tuple(raw.shape)}")
        if not np.issubdtype(raw.dtype, np.integer):
            raise DataError(path, f"mask must hold integers, got {raw.dtype}")
        if self.is_colour:
            return self._encode_colour(raw, path)
        return self._encode_int(raw, path)

    def _unknown_error(self, path: str | Path, unknown: list[str]) -> DataError:
        listed = ", ".join(unknown[:_MAX_LISTED])
        more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        return DataError(
            path, f"mask has values [{listed}]{more} that are not in the class map (known: {self.describe()})"
        )

    def _encode_int(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        pairs = list(self._pairs())
        if raw.dtype in (np.uint8, np.uint16):
            # A full lookup table over the dtype's range: one gather, no per-value loops.
            table = np.full(256 if raw.dtype == np.uint8 else 65536, -1, dtype=np.int64)
            for value, index in pairs:
                if value < table.size:
                    table[int(value)] = index
            out = table[raw]
            bad = out == -1
            if bad.any():
                raise self._unknown_error(path, [str(v) for v in np.unique(raw[bad])])
            return out
        # Other integer types (int32 from some TIFFs): search in the sorted known values.
        keys = np.array([int(v) for v, _ in pairs], dtype=np.int64)
        idx = np.array([i for _, i in pairs], dtype=np.int64)
        order = np.argsort(keys)
        keys, idx = keys[order], idx[order]
        flat = raw.astype(np.int64, copy=False).ravel()
        pos = np.clip(np.searchsorted(keys, flat), 0, keys.size - 1)
        found = keys[pos] == flat
        if not found.all():
            raise self._unknown_error(path, [str(v) for v in np.unique(flat[~found])])
        return idx[pos].reshape(raw.shape)

    def _encode_colour(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        if raw.ndim == 2:
            if raw.min() < 0 or raw.max() > 255:
                raise DataError(path, "grey mask values do not fit in 0..255 for a colour class map")
            raw = np.repeat(raw.astype(np.uint8)[:, :, None], 3, axis=2)
        elif raw.min() < 0 or raw.max() > 255:
            raise DataError(path, "colour mask components must be in 0..255")
        pairs = list(self._pairs())
        keys = _pack(np.array([v for v, _ in pairs], dtype=np.int64))
        idx = np.array([i for _, i in pairs], dtype=np.int64)
        order = np.argsort(keys)
        keys, idx = keys[order], idx[order]
        flat = _pack(raw.reshape(-1, 3))
        pos = np.clip(np.searchsorted(keys, flat), 0, keys.size - 1)
        found = keys[pos] == flat
        if not found.all():
            bad = np.unique(flat[~found])
            unknown = [f"({(k >> 16) & 255}, {(k >> 8) & 255}, {k & 255})" for k in bad.tolist()]
            raise self._unknown_error(path, unknown)
        return idx[pos].reshape(raw.shape[:2])

    def decode(self, labels: np.ndarray) -> np.ndarray:
        """Class indices -> canonical stored values (``(H, W)`` or ``(H, W, 3)`` for colour maps).

        ``ignore_index`` pixels become the first ignore value; without ignore values they are
        an error, since no stored value could represent them.
        """
        labels = np.asarray(labels)
        canon = list(self.canonical_values)
        known = list(range(self.num_classes))
        if self.ignore_values:
            canon.append(self.ignore_values[0])
            known.append(self.ignore_index)
        if self.is_colour:
            table = np.array(canon, dtype=np.uint8)
        else:
            top = max(int(v) for v in canon)  # type: ignore[arg-type]
            table = np.array(canon, dtype=np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int64)
        pos = np.full(labels.shape, -1, dtype=np.int64)
        for slot, value in enumerate(known):
            pos[labels == value] = slot
        if (pos < 0).any():
            bad = sorted(set(np.unique(labels[pos < 0]).tolist()))
            raise ValueError(f"labels {bad[:_MAX_LISTED]} are not class indices of this map")
        return table[pos]

    def palette(self) -> list[Colour]:
        """A display colour per class: the class colour for colour maps, otherwise a fixed,
        distinct set, with classes named ``background`` in black."""
        if self.is_colour:
            return [tuple(int(c) for c in v) for v in self.canonical_values]  # type: ignore[misc,union-attr]
        colours: list[Colour] = []
        nxt = 0
        for name in self.names:
            if name.lower() == "background":
                colours.append((0, 0, 0))
                continue
            colours.append(_DEFAULT_COLOURS[nxt % len(_DEFAULT_COLOURS)])
            nxt += 1
        return colours
