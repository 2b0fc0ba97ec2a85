"""The ``pathseg ambiguous`` configuration (CIMD), its cross-field checks, and the class map.

Defaults follow CIMD where the release is sound (linear schedule, T = 1000, epsilon prediction
with a learned-range variance, lr 1e-4, AdamW without weight decay, EMA 0.9999) and the paper
where the release is not (trained prior/posterior with ``lambda = 1``, one optimizer step per
batch, a run that ends at ``train.steps``). ``faithful: true`` switches the network to the
release's inert ambiguity networks and the KL weight to its ``1 / 1000``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pathseg.config import AugmentSection, Strict
from pathseg.data.annotators import bubil_class_map
from pathseg.data.classes import ClassMap
from pathseg.diffusion import DiffusionConfig
from pathseg.engine.trainer import TrainerConfig
from pathseg.errors import ConfigError

__all__ = [
    "AmbiguityLossSection",
    "AmbiguousConfig",
    "AmbiguousDataSection",
    "AmbiguousModelSection",
    "CIMDDiffusionConfig",
    "SampleSection",
    "ValidationSection",
    "check_config",
    "class_map_for",
    "class_map_from_info",
    "inference_info",
    "kl_weight",
]

# The stored values of the binary default: background 0, foreground 1 (0/1 masks) or 255 (0/255).
BINARY_CLASSES: dict[str, int | list[int]] = {"background": 0, "foreground": [1, 255]}


class AmbiguousDataSection(Strict):
    """Images with several annotators' masks (layouts: :mod:`pathseg.data.annotators`).

    ``train`` is split by image into train and validation (``val_fraction``, seeded by
    ``train.seed``) unless ``val`` is given; ``test`` is sampled and scored after training.
    ``layout`` ``None`` detects it from the folder names. ``pool`` picks BU-BIL's experts, crowd
    or both. ``allow_missing_annotators`` keeps images that lack some annotators' masks.

    ``classes`` ``None`` means the layout's own map: BU-BIL's (cell stored as 0, background as
    255 or 1; see :func:`~pathseg.data.annotators.bubil_class_map`) for the ``bubil`` layout,
    else ``background: 0, foreground: 1 or 255``. Give it explicitly otherwise, as for
    ``pathseg train`` (``{"background": 0, "lesion": [1, 255]}``); the same map is used for
    ``train``, ``val`` and ``test``. ``scale`` resizes images (and masks) once at load time;
    ``crop_size`` is the side of the random training crops at that scale.
    """

    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    layout: Literal["pathseg", "cimd", "bubil"] | None = None
    pool: Literal["experts", "crowd", "both"] = "experts"
    allow_missing_annotators: bool = False
    classes: dict[str, int | list[int]] | list[str] | None = None
    ignore_values: list[int] = Field(default_factory=list)
    val_fraction: float = Field(default=0.15, ge=0, lt=1)
    scale: float = Field(default=1.0, gt=0)
    crop_size: int = Field(default=128, ge=8)
    augment: AugmentSection = Field(default_factory=AugmentSection)


class AmbiguousModelSection(Strict):
    """Arguments of :class:`~pathseg.methods.ambiguous.network.CIMDNetwork` (image channels,
    classes and ``faithful`` come from the data and the top-level switch)."""

    latent_dim: int = Field(default=6, ge=1)
    base_channels: int = Field(default=32, ge=8)
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = Field(default=1, ge=1)
    attention_levels: list[int] = Field(default_factory=list)
    encoder_filters: list[int] = Field(default_factory=lambda: [32, 64, 128, 192])

    @property
    def size_multiple(self) -> int:
        """Height and width the denoiser accepts are multiples of this."""
        return 2 ** (len(self.channel_mults) - 1)


@dataclass
class CIMDDiffusionConfig(DiffusionConfig):
    """CIMD's diffusion: guided-diffusion's linear schedule, T = 1000, epsilon, plain MSE.

    The objective is :func:`~pathseg.methods.ambiguous.network.cimd_loss`, so of the generic
    keys only ``schedule``, ``num_steps``, ``beta_start``/``beta_end`` and ``clip_sample`` apply;
    :func:`check_config` rejects settings of the others that the objective would ignore.
    """

    schedule: str = "linear"
    weighting: Literal["uniform", "p2", "min_snr"] = "uniform"


class AmbiguityLossSection(Strict):
    """``kl_weight`` is lambda of ``MSE + L_vb + lambda KL(q || p)``; ``None`` means 1 (the paper),
    or 1e-3 with ``faithful: true`` (the release divides the KL by 1000)."""

    kl_weight: float | None = Field(default=None, ge=0)


class SampleSection(Strict):
    """How masks are drawn by ``pathseg ambiguous sample`` and for ``data.test``.

    ``samples`` masks per image (N), ``method`` ``ddim`` (``eta`` 0: deterministic given the
    starting noise and z) or ``ddpm`` (ancestral, learned variance) over ``steps`` respaced
    steps; ``batch_size`` samples go through the network at once. ``seed`` with the image's stem
    fixes every draw, so a rerun gives the same masks.
    """

    samples: int = Field(default=16, ge=1)
    method: Literal["ddim", "ddpm"] = "ddim"
    steps: int = Field(default=50, ge=1)
    eta: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """The network's number format: bf16 autocast where the hardware runs it natively (``auto``)."""
    seed: int = 0
    include_diagonal: bool = True
    """GED with the ``i = j`` pairs (MoSE-AUSeg / CIMD practice); False: the unbiased form."""
    ci_formula: Literal["harmonic", "third_party"] = "harmonic"


class ValidationSection(Strict):
    """At every evaluation: ``samples`` masks for the first ``images`` validation images with a
    ``steps``-step DDIM sampler, scored by GED (lower is better; it picks the best checkpoint)."""

    images: int = Field(default=2, ge=1)
    samples: int = Field(default=4, ge=2)
    steps: int = Field(default=10, ge=1)


@dataclass
class AmbiguousTrainerConfig(TrainerConfig):
    """The engine settings with CIMD's defaults (lr 1e-4, AdamW, no weight decay, EMA 0.9999)."""

    steps: int = 2000
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.9999
    eval_every: int = 500
    checkpoint_every: int = 500
    monitor: str = "ged"
    monitor_mode: Literal["max", "min"] = "min"


class AmbiguousConfig(Strict):
    """Everything ``pathseg ambiguous train`` needs (and ``sample`` reads back from the run)."""

    data: AmbiguousDataSection = Field(default_factory=AmbiguousDataSection)
    model: AmbiguousModelSection = Field(default_factory=AmbiguousModelSection)
    diffusion: CIMDDiffusionConfig = Field(default_factory=CIMDDiffusionConfig)
    ambiguity: AmbiguityLossSection = Field(default_factory=AmbiguityLossSection)
    train: AmbiguousTrainerConfig = Field(default_factory=AmbiguousTrainerConfig)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    sample: SampleSection = Field(default_factory=SampleSection)
    faithful: bool = False
    output: Path = Path("runs/ambiguous")


def kl_weight(config: AmbiguousConfig) -> float:
    """lambda: ``ambiguity.kl_weight``, else 1 (paper) or 1e-3 (``faithful``, the release)."""
    if config.ambiguity.kl_weight is not None:
        return config.ambiguity.kl_weight
    return 1e-3 if config.faithful else 1.0


def check_config(config: AmbiguousConfig) -> None:
    """Errors pydantic cannot see: missing data, diffusion keys CIMD's objective would ignore,
    crops and sampler steps that the network or the schedule cannot take."""
    if config.data.train is None:
        raise ConfigError("data.train is not set: give a multi-annotator folder (--train PATH)")
    diffusion = config.diffusion
    if diffusion.prediction not in ("epsilon", "sample"):
        raise ConfigError(
            f"diffusion.prediction={diffusion.prediction!r}: CIMD predicts epsilon (the release) or "
            "sample (the mask x0)"
        )
    if config.faithful and diffusion.prediction != "epsilon":
        raise ConfigError(
            "faithful=true reproduces the release, which predicts epsilon: drop diffusion.prediction"
        )
    ignored = {
        "loss": (diffusion.loss, "mse"),
        "weighting": (diffusion.weighting, "uniform"),
        "condition_dropout": (diffusion.condition_dropout, 0.0),
    }
    for key, (value, supported) in ignored.items():
        if value != supported:
            raise ConfigError(
                f"diffusion.{key}={value!r} is not used by CIMD's objective (MSE, uniform "
                f"t, no condition dropout); remove it or set {supported!r}"
            )
    model = config.model
    if not model.channel_mults or not model.encoder_filters:
        raise ConfigError("model.channel_mults and model.encoder_filters need at least one entry each")
    multiple = model.size_multiple
    if config.data.crop_size % multiple:
        raise ConfigError(
            f"data.crop_size={config.data.crop_size} must be a multiple of {multiple} "
            f"(the denoiser halves the size {len(model.channel_mults) - 1} times)"
        )
    sampler_steps = {"sample.steps": config.sample.steps, "validation.steps": config.validation.steps}
    for where, steps in sampler_steps.items():
        if steps > diffusion.num_steps:
            raise ConfigError(f"{where}={steps} exceeds diffusion.num_steps={diffusion.num_steps}")


def class_map_for(config: AmbiguousConfig, layout: str) -> ClassMap:
    """The class map of the run's masks; ``layout`` is the training folder's (see
    :class:`AmbiguousDataSection` for what ``classes: null`` means)."""
    data = config.data
    if data.classes is None and layout == "bubil":
        return bubil_class_map(data.ignore_values)
    classes = BINARY_CLASSES if data.classes is None else data.classes
    return ClassMap.from_config(classes, ignore_values=data.ignore_values)


def inference_info(config: AmbiguousConfig, class_map: ClassMap, layout: str) -> dict[str, Any]:
    """What ``pathseg ambiguous sample`` must know and never guess (``inference.json``): classes,
    working scale, crop, how masks are drawn, and the foreground convention of the metrics."""
    return {
        "method": "cimd",
        "classes": [
            {
                "index": i,
                "name": name,
                "stored_values": [v if isinstance(v, int) else list(v) for v in class_map.alternatives(i)],
                "color": list(colour),
            }
            for i, (name, colour) in enumerate(zip(class_map.names, class_map.palette(), strict=True))
        ],
        "ignore_values": [v if isinstance(v, int) else list(v) for v in class_map.ignore_values],
        "ignore_index": class_map.ignore_index,
        "foreground": "class index > 0 (metrics and uncertainty maps are binary)",
        "layout": layout,
        "scale": config.data.scale,
        "crop_size": config.data.crop_size,
        "size_multiple": config.model.size_multiple,
        "faithful": config.faithful,
        "kl_weight": kl_weight(config),
        "diffusion": {
            "schedule": config.diffusion.schedule,
            "num_steps": config.diffusion.num_steps,
            "clip_sample": config.diffusion.clip_sample,
        },
        "sampler": {
            "method": config.sample.method,
            "steps": config.sample.steps,
            "eta": config.sample.eta,
            "samples": config.sample.samples,
        },
    }


def class_map_from_info(info: dict[str, Any]) -> ClassMap:
    """The class map written by :func:`inference_info` (stored values keep their alternatives;
    a colour is one ``[r, g, b]`` alternative)."""
    classes = {entry["name"]: entry["stored_values"] for entry in info["classes"]}
    return ClassMap.from_config(
        classes, ignore_values=info.get("ignore_values", []), ignore_index=info.get("ignore_index", 255)
    )
