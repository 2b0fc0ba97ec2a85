"""Typed run configurations: YAML file, then ``key.path=value`` overrides, validated by pydantic.

Unknown keys are errors (a typo must not silently fall back to a default). The resolved config is
saved as ``config.yaml`` in every run folder, so ``pathseg train --config <run>/config.yaml``
reproduces a run.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathseg.engine.trainer import TrainerConfig
from pathseg.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class AugmentSection(Strict):
    flips: bool = True
    rotate90: bool = True
    scale_range: tuple[float, float] = (1.0, 1.0)
    color_jitter: float = 0.0
    stain_jitter: float = 0.0


class DataSection(Strict):
    """Where the data is and how to read it.

    ``train``/``val``/``test`` are folders holding ``images/`` and ``masks/`` (matching file stems);
    without ``val`` a validation split is cut from ``train`` by ``val_fraction``, by group when
    ``groups_csv`` is given. ``classes`` maps class names to the pixel value(s) used in the mask files.
    """

    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    mask_suffix: str = ""
    classes: dict[str, int | list[int]] | list[str] = Field(
        default_factory=lambda: {"background": 0, "foreground": [1, 255]}
    )
    ignore_values: list[int] = Field(default_factory=list)
    groups_csv: Path | None = None
    label_fraction: float = 1.0
    val_fraction: float = 0.15
    mpp: float | None = None
    """Microns per pixel of the images as stored (e.g. 0.5 at 20x); recorded so slide inference
    reads slides at the resolution the model was trained at (``mpp / scale``)."""
    scale: float = Field(default=1.0, gt=0)
    crop_size: int = Field(default=256, ge=16)
    augment: AugmentSection = Field(default_factory=AugmentSection)


class ModelSection(Strict):
    name: str = "resunet_resnet18"
    # Everything else is passed to the model's constructor; the registry rejects unknown names.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k != "name"}


class LossSection(Strict):
    terms: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "dice": 1.0})
    focal_gamma: float = 2.0
    class_weights: list[float] | None = None


class InstanceSection(Strict):
    """How predicted objects (glands, nuclei) are separated; see :mod:`pathseg.inference.instances`.

    ``method: boundary`` trains on the boundary-aware target (background / interior / a band of
    ``boundary_width`` pixels at the working resolution) and separates objects by marker-controlled
    watershed; it needs a class map with one object class. ``components`` (default) keeps a plain
    per-class target and takes connected components. ``min_area`` (native pixels) drops smaller
    predicted objects from both maps.
    """

    method: Literal["components", "boundary"] = "components"
    boundary_width: int = Field(default=3, ge=1)
    boundary_weight: float = Field(default=1.0, gt=0)
    """Cross-entropy weight of the boundary class relative to the other two."""
    min_area: int = Field(default=0, ge=0)
    marker_threshold: float = Field(default=0.5, gt=0, lt=1)
    marker_min_area: int = Field(default=0, ge=0)
    """Interior regions smaller than this (native pixels) seed no object of their own."""


class EvalSection(Strict):
    overlap: float = 0.25
    blend: Literal["gaussian", "constant"] = "gaussian"
    sw_batch_size: int = 4
    object_metrics: bool = True
    max_overlays: int = 16


class SupervisedConfig(Strict):
    """Everything ``pathseg train`` needs.

    ``init`` starts from saved weights (a file or a run folder). A diffusion denoiser from
    ``pathseg pretrain`` is turned into a segmenter (GenSelfDiff: head replaced, time input fixed,
    all weights trained) and ``model`` is then set to that network; other weights are loaded into
    ``model`` where names and shapes match.
    """

    init: Path | None = None
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossSection = Field(default_factory=LossSection)
    instances: InstanceSection = Field(default_factory=InstanceSection)
    train: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: Path = Path("runs/train")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=500"`` -> (["train", "steps"], 500); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err.problem})") from None
    return key.strip().split("."), value


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = config
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
        node[path[-1]] = value
    return config


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def resolve_config(schema: type[Strict], path: Path | None = None, overrides: list[str] | None = None) -> Any:
    """Load ``path`` (optional), apply overrides, validate against ``schema``; errors name the key."""
    raw = load_yaml(path) if path else {}
    raw = apply_overrides(raw, overrides or [])
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, schema, path)) from None


def _explain(err: ValidationError, schema: type[Strict], path: Path | None) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    where = f"{path}: " if path else ""
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _known_keys(schema, [str(p) for p in first["loc"][:-1]])
        hint = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
        return f"{where}unknown config key {key!r}{suggestion}"
    return f"{where}config key {key!r}: {first['msg']} (got {first.get('input')!r})"


def _known_keys(schema: type[BaseModel], parents: list[str]) -> list[str]:
    """Field names of the section at ``parents`` (a pydantic model or a dataclass such as TrainerConfig)."""
    section: Any = schema
    for name in parents:
        fields = getattr(section, "model_fields", {})
        if name not in fields:
            return []
        section = fields[name].annotation
    if dataclasses.is_dataclass(section):
        return [f.name for f in dataclasses.fields(section)]
    return list(getattr(section, "model_fields", {}))


def to_plain(config: BaseModel) -> dict[str, Any]:
    """JSON/YAML-ready dict (paths as strings, tuples as lists)."""
    return config.model_dump(mode="json")
