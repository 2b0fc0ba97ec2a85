"""Drawing many plausible masks per image from a trained CIMD run, and scoring them.

Every image is sampled whole at the run's working scale (``data.scale``): it is resized, padded
by reflection up to the denoiser's size multiple, sampled, cropped back and the masks upsampled
to the native size by nearest neighbour, so the metrics compare them with the annotators' masks
at native resolution. There is no tiling: an image much larger than the training crops is
sampled in one piece (the networks are convolutional; the prior sees the whole image), which
costs memory in proportion to its area times ``sample.batch_size``.

Per image ``<stem>``, ``sample_images`` writes into the output folder::

    <stem>/sample_<i>.png   the N masks: palette PNGs of class indices (as `pathseg predict`)
    <stem>/mean.png         the share of samples calling a pixel foreground, 0..255 (8-bit grey)
    <stem>/variance.png     p (1 - p) of those votes, scaled by its maximum 1/4, magma colours
    <stem>/entropy.png      their binary entropy in bits (maximum 1), magma colours
    <stem>_panel.png        image | annotators | first samples | mean, variance, entropy
    per_image.csv           name, seconds (wall time of the sampling), and with annotators
                            the metrics of :class:`~pathseg.metrics.ambiguity.AmbiguityEvaluator`
    metrics.json            with annotators: their means over images, and the settings
    sampling.json           the run, the settings, the images and the mean time per image

Foreground is "class index > 0": the metrics and maps are binary, as CIMD's are.
"""

from __future__ import annotations

import csv
import json
import math
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from pathseg.config import resolve_config
from pathseg.data.annotators import MultiAnnotatorDataset, MultiSample, check_multi_samples
from pathseg.data.annotators import discover_multi_annotator as discover
from pathseg.data.classes import ClassMap
from pathseg.data.folders import find_images
from pathseg.data.io import IMAGE_EXTENSIONS, read_image, write_image, write_mask
from pathseg.data.transforms import resize_pair, to_tensor
from pathseg.diffusion import Sampler, SamplerConfig
from pathseg.errors import ConfigError, DataError
from pathseg.inference.evaluate import output_folder
from pathseg.inference.precision import inference_autocast
from pathseg.methods.ambiguous.config import AmbiguousConfig, SampleSection, class_map_from_info
from pathseg.methods.ambiguous.network import CIMDNetwork, sample_masks
from pathseg.metrics.ambiguity import AmbiguityEvaluator, uncertainty_maps
from pathseg.models.weights import load_weights, read_config
from pathseg.report.figures import image_grid, overlay
from pathseg.report.run_report import ReportLayout

__all__ = [
    "REPORT_LAYOUT",
    "draw_masks",
    "find_sample_inputs",
    "image_generator",
    "load_ambiguous_run",
    "make_sampler",
    "run_class_map",
    "sample_images",
    "sample_inputs",
    "scored_annotators",
]

_PANEL_TILE = 384  # panel tiles are shown at most this many pixels wide or high

# How a run report shows the test samples this module writes.
REPORT_LAYOUT = ReportLayout(
    headline=("ged", "hm_iou", "ci", "s_c", "d_max", "d_a", "ece"),
    per_image=("ged", "hm_iou", "ci", "ece", "seconds"),
    rank_by="ged",
    higher_is_better=False,
    figures="*_panel.png",
    figure_suffix="_panel",
    figure_note="each panel: the image and the annotators' masks | the first samples | the share of "
    "samples calling a pixel foreground, their variance and entropy (brighter: less agreement)",
)


# ---------------------------------------------------------------------------- the run


def load_ambiguous_run(run_dir: Path) -> tuple[CIMDNetwork, AmbiguousConfig]:
    """The trained network (``model.safetensors``: EMA weights of the best checkpoint, rebuilt
    from the config in its metadata) in eval mode, and the run's config."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(run_dir, "run folder does not exist" if not run_dir.exists() else "not a folder")
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise ConfigError(f"{run_dir}: no model.safetensors (did training finish? resume it with --resume)")
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir}: no config.yaml; is this a `pathseg ambiguous train` run folder?")
    stored = read_config(weights) or {}
    if stored.get("name") != "cimd":
        raise DataError(weights, f"not a CIMD network (model config name {stored.get('name')!r})")
    model = CIMDNetwork(**{k: v for k, v in stored.items() if k != "name"})
    load_weights(model, weights)
    return model.eval(), resolve_config(AmbiguousConfig, run_dir / "config.yaml")


def run_class_map(run_dir: Path) -> ClassMap:
    """The class map recorded in the run's ``inference.json``."""
    path = Path(run_dir) / "inference.json"
    if not path.exists():
        raise ConfigError(f"{run_dir}: no inference.json; is this a `pathseg ambiguous train` run folder?")
    return class_map_from_info(json.loads(path.read_text()))


def make_sampler(config: AmbiguousConfig, method: str, steps: int, eta: float = 0.0) -> Sampler:
    """A sampler for the run's schedule; the network outputs epsilon (or x0, with
    ``diffusion.prediction: sample``) and a learned variance."""
    return Sampler(
        config.diffusion.noise_schedule(),
        config.diffusion.prediction,
        SamplerConfig(method=method, steps=steps, eta=eta),
        config.diffusion.clip_sample,
        learned_variance=True,
    )


# ---------------------------------------------------------------------------- one image


def image_generator(seed: int, stem: str) -> torch.Generator:
    """The CPU generator of one image's draws: a function of the seed and the stem only, so an
    image gets the same masks whichever other images are sampled with it."""
    state = np.random.SeedSequence([seed, zlib.crc32(stem.encode("utf-8"))]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _pad_to(x: torch.Tensor, multiple: int, min_size: int) -> torch.Tensor:
    """Pad the bottom and right of ``(B, C, H, W)`` up to multiples of ``multiple`` (at least
    ``min_size``) by reflection (replication where the image is too small to reflect)."""
    height, width = x.shape[-2:]
    target_h = max(-(-height // multiple) * multiple, -(-min_size // multiple) * multiple)
    target_w = max(-(-width // multiple) * multiple, -(-min_size // multiple) * multiple)
    pad = (0, target_w - width, 0, target_h - height)
    if pad[1] == 0 and pad[3] == 0:
        return x
    mode = "reflect" if pad[1] < width and pad[3] < height else "replicate"
    return F.pad(x, pad, mode=mode)


@torch.no_grad()
def draw_masks(
    model: CIMDNetwork,
    image: np.ndarray,
    scale: float,
    sampler: Sampler,
    n: int,
    generator: torch.Generator,
    batch_size: int = 16,
    precision: str = "auto",
) -> np.ndarray:
    """``n`` masks ``(n, H, W)`` (``uint8`` class indices) for a native ``uint8`` RGB image.

    The image is resized by ``scale``, padded to the denoiser's size multiple, sampled in chunks
    of ``batch_size`` (each chunk draws its own z and noise from ``generator``, so the result
    depends on the seed and the chunk size only), cropped back and upsampled to the native size.
    ``precision`` is the network's (:func:`~pathseg.inference.precision.inference_autocast`); the
    sampler's arithmetic stays in float32.
    """
    height, width = image.shape[:2]
    scaled, _ = resize_pair(image, None, scale)
    x = to_tensor(np.ascontiguousarray(scaled)).unsqueeze(0)
    multiple = model.denoiser.size_multiple
    min_size = max(model.prior_net.min_size, model.posterior_net.min_size)
    device = next(model.parameters()).device
    padded = _pad_to(x, multiple, min_size).to(device)
    chunks = []
    for start in range(0, n, batch_size):
        with inference_autocast(device, precision):
            masks, _ = sample_masks(model, padded, min(batch_size, n - start), sampler, generator)
        chunks.append(masks[:, 0, : x.shape[-2], : x.shape[-1]].cpu())
    masks = torch.cat(chunks).float().unsqueeze(1)
    native = F.interpolate(masks, size=(height, width), mode="nearest-exact")
    return native[:, 0].to(torch.uint8).numpy()


def scored_annotators(masks: np.ndarray, ignore_index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Binary foreground of the annotators that drew this image (``(M, H, W)`` bool) and the
    pixels any of them left unlabelled (``None`` when none did). An annotator without a mask
    for the image (all ``ignore_index``) is left out."""
    present = [m for m in np.moveaxis(masks, -1, 0) if not (m == ignore_index).all()]
    stack = np.stack(present)
    unlabelled = (stack == ignore_index).any(axis=0)
    foreground = (stack > 0) & (stack != ignore_index)
    return foreground, (unlabelled if unlabelled.any() else None)


# ---------------------------------------------------------------------------- pictures


def _colour(values: np.ndarray, top: float) -> np.ndarray:
    """``values / top`` in magma colours as ``uint8`` RGB."""
    cmap = matplotlib.colormaps["magma"]
    return (cmap(np.clip(values / top, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def _grey(values: np.ndarray) -> np.ndarray:
    """``[0, 1]`` -> ``uint8`` grey, 1 = 255."""
    return (np.clip(values, 0, 1) * 255).round().astype(np.uint8)


def _panel(
    image: np.ndarray,
    annotators: Sequence[np.ndarray],
    samples: np.ndarray,
    maps: Sequence[np.ndarray],
    palette: list[tuple[int, int, int]],
    ignore_index: int,
    per_row: int = 4,
) -> np.ndarray:
    """Rows: the image and up to ``per_row`` annotator overlays; the first ``per_row`` sample
    overlays; the mean, variance and entropy maps. Tiles larger than ``_PANEL_TILE`` are
    subsampled for display."""
    rows = [
        [image, *(overlay(image, a, palette, ignore_index=ignore_index) for a in annotators[:per_row])],
        [overlay(image, s, palette, ignore_index=None) for s in samples[:per_row]],
        list(maps),
    ]
    columns = max(len(row) for row in rows)
    step = max(1, math.ceil(max(image.shape[:2]) / _PANEL_TILE))
    blank = np.full_like(image[::step, ::step], 255)
    tiles = [(row[i][::step, ::step] if i < len(row) else blank) for row in rows for i in range(columns)]
    return image_grid(tiles, columns=columns, gap=4)


def _write_image_outputs(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    samples: np.ndarray,
    annotators: Sequence[np.ndarray],
    class_map: ClassMap,
) -> None:
    folder = output_folder(out_dir / stem)
    palette = class_map.palette()
    for i, mask in enumerate(samples):
        write_mask(folder / f"sample_{i}.png", mask, palette=palette)
    mean = (samples > 0).mean(axis=0)
    variance, entropy = uncertainty_maps(samples > 0)
    grey_mean = _grey(mean)
    write_image(folder / "mean.png", grey_mean)
    write_image(folder / "variance.png", _colour(variance, 0.25))  # p (1 - p) <= 1/4
    write_image(folder / "entropy.png", _colour(entropy, 1.0))  # binary entropy <= 1 bit
    maps = [np.repeat(grey_mean[..., None], 3, axis=2), _colour(variance, 0.25), _colour(entropy, 1.0)]
    panel = _panel(image, annotators, samples, maps, palette, class_map.ignore_index)
    write_image(out_dir / f"{stem}_panel.png", panel)


# ---------------------------------------------------------------------------- inputs


def find_sample_inputs(
    path: Path, layout: str | None = None, pool: str = "experts", allow_missing: bool = False
) -> tuple[list[MultiSample], bool]:
    """What to sample: ``(samples, annotated)``.

    ``path`` may be one image file, a folder of images (or one holding only ``images/``), or a
    multi-annotator folder in any layout (then ``annotated`` is True and the masks are scored).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(path, f"not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return [MultiSample(stem=path.stem, image=path)], False
    if not path.exists():
        raise DataError(path, "does not exist")
    children = {child.name.lower() for child in path.iterdir() if child.is_dir()}
    has_images = any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
    if layout is None and (has_images or ("images" in children and "masks" not in children)):
        folder = path if has_images else next(c for c in path.iterdir() if c.name.lower() == "images")
        return [MultiSample(stem=p.stem, image=p) for p in find_images(folder)], False
    return discover(path, layout=layout, pool=pool, allow_missing=allow_missing), True


def _check_stems(samples: Sequence[MultiSample]) -> None:
    seen: dict[str, Path] = {}
    for sample in samples:
        if sample.stem in seen:
            raise DataError(
                sample.image,
                f"same stem as {seen[sample.stem].name}; both would be written to {sample.stem}/ "
                "(rename one)",
            )
        seen[sample.stem] = sample.image


def sample_inputs(
    model: CIMDNetwork,
    config: AmbiguousConfig,
    class_map: ClassMap,
    samples: Sequence[MultiSample],
    annotated: bool,
    out_dir: Path,
    settings: SampleSection,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Sample every image, write the files of the module docstring, return the summary (the
    metric means with annotators, else only the timing)."""
    _check_stems(samples)
    if annotated:
        check_multi_samples(samples, class_map)
    output_folder(out_dir)
    sampler = make_sampler(config, settings.method, settings.steps, settings.eta)
    evaluator = AmbiguityEvaluator(settings.include_diagonal, settings.ci_formula)
    dataset = MultiAnnotatorDataset(samples, class_map, annotator="all", cache=False) if annotated else None
    rows: list[dict[str, Any]] = []
    for index, sample in enumerate(samples):
        if dataset is not None:
            image, masks = dataset.load(index)
            annotators = list(np.moveaxis(masks, -1, 0))
        else:
            image, masks, annotators = read_image(sample.image), None, []
        started = time.perf_counter()
        drawn = draw_masks(
            model,
            image,
            config.data.scale,
            sampler,
            settings.samples,
            image_generator(settings.seed, sample.stem),
            settings.batch_size,
            settings.precision,
        )
        row: dict[str, Any] = {"name": sample.stem, "seconds": round(time.perf_counter() - started, 4)}
        if masks is not None:
            truth, ignore = scored_annotators(masks, class_map.ignore_index)
            row["annotators"] = len(truth)
            if len(truth) >= 2 and settings.samples >= 2:
                row.update(evaluator.update(drawn > 0, truth, sample.stem, ignore=ignore))
        _write_image_outputs(out_dir, sample.stem, image, drawn, annotators, class_map)
        rows.append(row)

    _write_rows(out_dir / "per_image.csv", rows)
    settings_info = {
        "run": None if run_dir is None else str(run_dir),
        **settings.model_dump(),
        "scale": config.data.scale,
        "images": len(rows),
        "mean_seconds": float(np.mean([r["seconds"] for r in rows])) if rows else float("nan"),
    }
    (out_dir / "sampling.json").write_text(json.dumps(settings_info, indent=2) + "\n")
    summary: dict[str, Any] = {"mean_seconds": settings_info["mean_seconds"], "images": len(rows)}
    if annotated and evaluator.per_image:
        means = {k: v for k, v in evaluator.summary().items() if k != "per_image"}
        summary.update(means)
        report = {**means, "settings": settings_info}
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return summary


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _settings(config: AmbiguousConfig, changes: dict[str, Any]) -> SampleSection:
    """The run's ``sample`` section with ``changes`` applied and checked."""
    try:
        settings = SampleSection.model_validate({**config.sample.model_dump(), **changes})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"sample setting {key!r}: {first['msg']} (got {first.get('input')!r})") from None
    if settings.steps > config.diffusion.num_steps:
        raise ConfigError(
            f"{settings.steps} sampler steps exceed the run's {config.diffusion.num_steps} diffusion steps"
        )
    return settings


def sample_images(
    run_dir: Path,
    images: Path,
    out_dir: Path,
    samples: int | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    *,
    eta: float | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    layout: str | None = None,
    pool: str = "experts",
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Draw ``samples`` masks per image of ``images`` with the run in ``run_dir`` into ``out_dir``.

    Settings left ``None`` come from the run's ``sample`` section. ``images`` is one image, a
    folder of images, or a multi-annotator folder (then the samples are scored against its
    annotators). Returns the summary of :func:`sample_inputs`.
    """
    model, config = load_ambiguous_run(run_dir)
    class_map = run_class_map(run_dir)
    given = {"samples": samples, "method": sampler, "steps": steps, "seed": seed, "eta": eta}
    given |= {"batch_size": batch_size, "precision": precision}
    settings = _settings(config, {k: v for k, v in given.items() if v is not None})
    found, annotated = find_sample_inputs(images, layout, pool, allow_missing)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return sample_inputs(model.to(device), config, class_map, found, annotated, out_dir, settings, run_dir)
