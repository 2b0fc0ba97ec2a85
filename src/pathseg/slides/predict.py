"""Segment a whole slide in bounded memory, resumably, and write what QuPath and a person open.

One slide, from its file to its outputs::

    slide -> tissue mask (low resolution) -> tile grid at the model's µm/px, tiles on tissue only
          -> DataLoader workers read tiles while the network runs (batched; bf16 on a GPU)
          -> StripBlender: Gaussian-weighted overlap, each canvas block final once its last tile is in
          -> labels.zarr (on disk, chunked)   [state.npz after every batch: --resume continues there]
          -> <stem>.ome.tif (pyramidal labels), <stem>.geojson (QuPath), <stem>.csv (areas),
             <stem>.thumbnail.png (overlay), <stem>.tissue.png / .tissue.geojson

Memory holds a few tiles and the DataLoader's prefetched batches, whatever the slide's size; the
canvas (Zarr) and the rows shared between strips of tiles (.npy per tile) live under ``<stem>.partial/``,
removed once the outputs are written. Canvas pixels no tile predicted, and pixels off the tissue
mask, carry 255 ("not analysed").
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pathseg.data.io import atomic_output
from pathseg.data.transforms import to_tensor
from pathseg.engine.checkpoint import atomic_write_text
from pathseg.engine.progress import StepProgress
from pathseg.errors import ConfigError, DataError
from pathseg.inference.instances import class_probabilities
from pathseg.inference.precision import PRECISIONS, inference_autocast
from pathseg.report.figures import overlay
from pathseg.slides.blend import Block, StripBlender, TileGrid, gaussian_weights
from pathseg.slides.ometiff import IGNORE_INDEX, write_label_ome_tiff
from pathseg.slides.reader import Slide
from pathseg.slides.summary import class_area_table, write_area_csv
from pathseg.slides.tissue import TissueMask, TissueSettings, detect_tissue
from pathseg.slides.vectorize import label_polygons, qupath_features, write_geojson

__all__ = ["NOT_ANALYSED", "SlideModel", "SlideOutputs", "SlideSettings", "predict_slide"]

NOT_ANALYSED = IGNORE_INDEX  # 255: glass, and anything no tile predicted
CHUNK = 512  # label canvas chunks (px): small enough to write a tile's block cheaply


@dataclass
class SlideModel:
    """A trained network and what it needs to be run on a slide."""

    model: nn.Module
    class_names: Sequence[str]
    colors: Sequence[tuple[int, int, int]]
    mpp: float  # µm per pixel the network was trained at
    tile: int  # network input, px at ``mpp``
    overlap: float = 0.25  # share of a tile shared with each neighbour (at most 0.5)
    method: str = "components"  # "boundary": outputs are background / interior / boundary

    @property
    def stride(self) -> int:
        overlap = min(max(self.overlap, 0.0), 0.5)
        return self.tile - round(self.tile * overlap)


@dataclass
class SlideSettings:
    batch_size: int = 8
    workers: int = 2  # DataLoader processes reading tiles while the network runs
    tissue: TissueSettings | None = field(default_factory=TissueSettings)  # None: predict everywhere
    min_tissue: float = 0.01  # share of a tile that must be tissue for the tile to be predicted
    simplify: float = 0.5  # GeoJSON simplification tolerance, in model pixels
    thumbnail_size: int = 2048
    # "auto": bf16 autocast on a GPU and on CPUs with native bf16 (AVX512-BF16 / AMX), where it runs
    # the network 2x faster (pathseg trains under bf16 autocast too); fp32 elsewhere.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")


@dataclass
class SlideOutputs:
    mask: Path
    geojson: Path
    csv: Path
    thumbnail: Path
    tissue: Path | None
    tiles: int  # tiles the network ran on
    seconds: float


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    names = {
        "mask": ".ome.tif",
        "geojson": ".geojson",
        "csv": ".csv",
        "thumbnail": ".thumbnail.png",
        "tissue_png": ".tissue.png",
        "tissue_geojson": ".tissue.geojson",
        "summary": ".json",
    }
    return {key: out_dir / f"{stem}{suffix}" for key, suffix in names.items()}


def slide_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


class FileCarryStore:
    """:class:`~pathseg.slides.blend.CarryStore` on disk: one small ``.npy`` file per tile column
    and strip (``<row>/<col>.npy``), so each tile reads and writes a few hundred KB and nothing
    the size of a slide's width is ever in memory."""

    def __init__(self, folder: Path, grid: TileGrid, channels: int) -> None:
        self.folder, self.grid, self.channels = folder, grid, channels
        folder.mkdir(parents=True, exist_ok=True)

    def read(self, row: int, x0: int, x1: int) -> np.ndarray:
        stride = self.grid.stride
        out = np.zeros((self.channels + 1, self.grid.overlap, x1 - x0), np.float32)
        for col in range(x0 // stride, (x1 - 1) // stride + 1):
            piece = self.folder / str(row - 1) / f"{col}.npy"
            if not piece.exists():
                continue  # nothing was predicted there
            values = np.load(piece)
            start = col * stride
            lo, hi = max(x0, start), min(x1, start + values.shape[-1])
            out[:, :, lo - x0 : hi - x0] = values[:, :, lo - start : hi - start]
        return out

    def write(self, row: int, x0: int, values: np.ndarray) -> None:
        folder = self.folder / str(row)
        folder.mkdir(exist_ok=True)
        np.save(folder / f"{x0 // self.grid.stride}.npy", values)

    def drop_before(self, row: int) -> None:
        """Forget the strips that no tile at or after strip ``row`` reads."""
        for path in self.folder.iterdir():
            if int(path.name) < row - 1:
                shutil.rmtree(path, ignore_errors=True)


class _TileReads(Dataset):
    """Tiles read from the slide at the model's resolution (runs in DataLoader workers)."""

    def __init__(self, slide: Slide, grid: TileGrid, indices: Sequence[int], downsample: float) -> None:
        self.slide, self.grid, self.indices, self.downsample = slide, grid, list(indices), downsample

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> torch.Tensor:
        box = tile_box(self.grid, self.indices[item], self.downsample)
        tile = self.grid.tile
        return to_tensor(self.slide.read_box(box, self.downsample, size=(tile, tile)))


def tile_box(grid: TileGrid, index: int, downsample: float) -> tuple[int, int, int, int]:
    """The level-0 box (x, y, w, h) a tile covers."""
    y, x = grid.origin(*grid.position(index))
    side = round(grid.tile * downsample)
    return round(x * downsample), round(y * downsample), side, side


def _fingerprint(slide: Slide, model: SlideModel, grid: TileGrid, settings: SlideSettings, run: str) -> dict:
    """What a resumed prediction must share with the interrupted one."""
    weights = hashlib.sha256()
    for tensor in model.model.state_dict().values():
        weights.update(tensor.detach().cpu().float().numpy().tobytes()[:4096])
    tissue = asdict(settings.tissue) if settings.tissue else None
    return {
        "slide": str(slide.path.resolve()),
        "slide_size": list(slide.dimensions),
        "run": run,
        "weights": weights.hexdigest()[:16],
        "grid": [grid.height, grid.width, grid.tile, grid.stride],
        "batch_size": settings.batch_size,
        "tissue": json.loads(json.dumps(tissue, default=str)),
        "min_tissue": settings.min_tissue,
    }


@contextmanager
def _disk_errors(where: Path) -> Iterator[None]:
    """Turn a full disk into one line naming the folder; what was finished stays on disk."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(
                where, "disk full; finished tiles are kept: free space and rerun with --resume"
            ) from None
        raise


def predict_slide(
    slide: Slide,
    model: SlideModel,
    out_dir: Path,
    settings: SlideSettings | None = None,
    resume: bool = False,
    run_name: str = "",
    show_progress: bool = True,
) -> SlideOutputs:
    """Segment ``slide`` and write its outputs under ``out_dir`` (see the module docstring).

    With ``resume``, an interrupted prediction of the same slide, model and settings continues from
    its last finished batch of tiles, and the result equals an uninterrupted run's.

    Raises:
        DataError: the slide has no µm/px (and none was given), no tissue was found, an unfinished
            prediction is in the way without ``resume`` (or was made with other settings), or the
            disk filled up.
    """
    settings = settings or SlideSettings()
    started = time.perf_counter()
    stem = slide_stem(slide.path)
    paths = output_paths(out_dir, stem)
    work = out_dir / f"{stem}.partial"
    downsample = model.mpp / slide.require_mpp()
    width0, height0 = slide.dimensions
    grid = TileGrid(math.ceil(height0 / downsample), math.ceil(width0 / downsample), model.tile, model.stride)
    tissue = _tissue(slide, settings, paths)
    jobs = [
        i
        for i in range(len(grid))
        if tissue is None or tissue.fraction(tile_box(grid, i, downsample)) >= settings.min_tissue
    ]
    if not jobs:
        raise DataError(slide.path, "no tile has enough tissue to predict (see the .tissue.png)")
    channels = _channels(model)
    fingerprint = _fingerprint(slide, model, grid, settings, run_name)
    with _disk_errors(out_dir):
        state = _open_work(work, fingerprint, resume)
        labels = _label_canvas(work, grid, fresh=state is None)
        carry = FileCarryStore(work / "carry", grid, channels)
        blender = StripBlender(grid, channels, carry, gaussian_weights(grid.tile))
        next_tile, next_batch = 0, 0
        if state is not None:
            next_tile, next_batch, blender.right = state
        batches = [jobs[i : i + settings.batch_size] for i in range(0, len(jobs), settings.batch_size)]
        finish = _Finisher(labels, tissue, downsample, model.method)
        progress = StepProgress(
            len(jobs), min(next_batch * settings.batch_size, len(jobs)), stem, show_progress, 64, unit="tile"
        )
        for k, (batch, outputs) in enumerate(
            _predicted_batches(slide, grid, batches[next_batch:], downsample, model, settings),
            start=next_batch,
        ):
            predicted = dict(zip(batch, outputs, strict=True))
            for index in range(next_tile, batch[-1] + 1):
                finish(blender.add(index, predicted.get(index)))
            next_tile, next_batch = batch[-1] + 1, k + 1
            _save_state(work, next_tile, next_batch, blender.right)
            carry.drop_before(grid.position(next_tile)[0] if next_tile < len(grid) else grid.rows)
            progress.update(
                min(next_batch * settings.batch_size, len(jobs)), f"on tissue ({len(grid)} in grid)"
            )
        for index in range(next_tile, len(grid)):  # glass after the last tissue tile
            finish(blender.add(index, None))
        progress.close()
        _write_outputs(labels, model, slide, downsample, paths, settings)
    seconds = time.perf_counter() - started
    summary = {
        "slide": str(slide.path),
        "backend": slide.backend,
        "slide_size": list(slide.dimensions),
        "slide_mpp": slide.mpp,
        "model_mpp": model.mpp,
        "downsample": downsample,
        "mask_size": [grid.width, grid.height],
        "tile": grid.tile,
        "stride": grid.stride,
        "tiles_in_grid": len(grid),
        "tiles_predicted": len(jobs),
        "classes": list(model.class_names),
        "not_analysed_value": NOT_ANALYSED,
        "run": run_name,
        "seconds": round(seconds, 2),
    }
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return SlideOutputs(
        paths["mask"],
        paths["geojson"],
        paths["csv"],
        paths["thumbnail"],
        paths["tissue_png"] if tissue is not None else None,
        len(jobs),
        seconds,
    )


def _channels(model: SlideModel) -> int:
    return 3 if model.method == "boundary" else len(model.class_names)


def _tissue(slide: Slide, settings: SlideSettings, paths: dict[str, Path]) -> TissueMask | None:
    if settings.tissue is None:
        return None
    tissue = detect_tissue(slide, settings.tissue)
    paths["tissue_png"].parent.mkdir(parents=True, exist_ok=True)
    tissue.save(paths["tissue_png"], paths["tissue_geojson"])
    if not tissue.mask.any():
        raise DataError(slide.path, "no tissue found (the slide looks like empty glass); nothing to predict")
    return tissue


def _open_work(work: Path, fingerprint: dict, resume: bool) -> tuple[int, int, np.ndarray] | None:
    """The saved state of an interrupted prediction (``resume``), or a fresh work folder."""
    job = work / "job.json"
    if work.exists() and not resume:
        raise DataError(
            work, "an unfinished prediction of this slide is here; rerun with --resume, or delete it"
        )
    if resume and job.exists():
        saved = json.loads(job.read_text())
        if saved != fingerprint:
            changed = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k])
            raise DataError(
                work, f"was started with other settings ({', '.join(changed)}); delete it to start over"
            )
        state = work / "state.npz"
        if state.exists():
            with np.load(state) as saved_state:
                return int(saved_state["next_tile"]), int(saved_state["next_batch"]), saved_state["right"]
        return None
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    atomic_write_text(job, json.dumps(fingerprint, indent=2))
    return None


def _save_state(work: Path, next_tile: int, next_batch: int, right: np.ndarray) -> None:
    """One file, replaced atomically: the position and the in-memory carry always agree."""
    tmp = work / f".state.{os.getpid()}.npz"
    with open(tmp, "wb") as handle:
        np.savez(handle, next_tile=next_tile, next_batch=next_batch, right=right)
    os.replace(tmp, work / "state.npz")


def _label_canvas(work: Path, grid: TileGrid, fresh: bool):
    import zarr

    return zarr.open_array(
        work / "labels.zarr",
        mode="w" if fresh else "a",
        shape=(grid.height, grid.width),
        chunks=(CHUNK, CHUNK),
        dtype="uint8",
        fill_value=NOT_ANALYSED,
    )


@torch.no_grad()
def _predicted_batches(
    slide: Slide,
    grid: TileGrid,
    batches: Sequence[Sequence[int]],
    downsample: float,
    model: SlideModel,
    settings: SlideSettings,
) -> Iterator[tuple[Sequence[int], np.ndarray]]:
    """The network's outputs ``(B, K, tile, tile)`` for each batch of tile indices, in order."""
    if not batches:
        return
    indices = [i for batch in batches for i in batch]
    workers = min(settings.workers, len(os.sched_getaffinity(0)))  # no more readers than cores
    loader = DataLoader(
        _TileReads(slide, grid, indices, downsample),
        batch_size=settings.batch_size,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )
    device = next(model.model.parameters()).device
    autocast = inference_autocast(device, settings.precision)
    network = model.model.to(memory_format=torch.channels_last)  # faster convolutions, CPU and GPU
    for batch, images in zip(batches, loader, strict=True):
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = network(images)
        yield batch, logits.float().cpu().numpy()


class _Finisher:
    """Turns a finished block of blended logits into class labels on the canvas."""

    def __init__(self, labels, tissue: TissueMask | None, downsample: float, method: str) -> None:
        self.labels, self.tissue, self.downsample, self.method = labels, tissue, downsample, method

    def __call__(self, block: Block | None) -> None:
        if block is None:
            return
        logits = torch.from_numpy(block.mean())
        probs = class_probabilities(logits.softmax(dim=0).numpy(), self.method)
        classes = probs.argmax(axis=0).astype(np.uint8)
        classes[block.weights <= 0] = NOT_ANALYSED
        if self.tissue is not None:
            classes[~self._on_tissue(block)] = NOT_ANALYSED
        height, width = classes.shape
        self.labels[block.y : block.y + height, block.x : block.x + width] = classes

    def _on_tissue(self, block: Block) -> np.ndarray:
        """Whether each canvas pixel's centre falls on the tissue mask."""
        height, width = block.weights.shape
        scale = self.downsample / self.tissue.downsample
        rows = ((np.arange(height) + block.y + 0.5) * scale).astype(np.int64)
        cols = ((np.arange(width) + block.x + 0.5) * scale).astype(np.int64)
        mask = self.tissue.mask
        inside_r, inside_c = rows < mask.shape[0], cols < mask.shape[1]
        out = np.zeros((height, width), bool)
        out[np.ix_(inside_r, inside_c)] = mask[np.ix_(rows[inside_r], cols[inside_c])]
        return out


def _write_outputs(
    labels,
    model: SlideModel,
    slide: Slide,
    downsample: float,
    paths: dict[str, Path],
    settings: SlideSettings,
) -> None:
    names, colors = list(model.class_names), [tuple(c) for c in model.colors]
    write_label_ome_tiff(
        paths["mask"], labels, class_names=names, colors=colors, mpp=model.mpp, downsample=downsample
    )
    shown = [i for i, name in enumerate(names) if name.lower() != "background"]
    polygons = label_polygons(
        labels, downsample=downsample, classes=shown, simplify=settings.simplify * downsample
    )
    write_geojson(paths["geojson"], qupath_features(polygons, names, colors))
    rows = class_area_table(labels, class_names=names, downsample=downsample, mpp=slide.mpp)
    write_area_csv(paths["csv"], rows)
    _write_thumbnail(paths["thumbnail"], labels, slide, colors, names, settings.thumbnail_size)


def _write_thumbnail(path: Path, labels, slide: Slide, colors, names, size: int) -> None:
    """The slide's thumbnail with the predicted classes over it (background left uncoloured)."""
    picture = slide.thumbnail(size)
    height, width = picture.shape[:2]
    rows = np.minimum(
        ((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64), labels.shape[0] - 1
    )
    cols = np.minimum(
        ((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64), labels.shape[1] - 1
    )
    small = np.full((height, width), NOT_ANALYSED, np.uint8)
    # Sample the canvas block by block: never a whole row of a wide slide in memory.
    step = CHUNK * 4
    for y0 in range(0, labels.shape[0], step):
        take_r = np.flatnonzero((rows >= y0) & (rows < y0 + step))
        for x0 in range(0, labels.shape[1], step) if take_r.size else ():
            take_c = np.flatnonzero((cols >= x0) & (cols < x0 + step))
            if take_c.size:
                block = np.asarray(labels[y0 : y0 + step, x0 : x0 + step])
                small[np.ix_(take_r, take_c)] = block[np.ix_(rows[take_r] - y0, cols[take_c] - x0)]
    background = next((i for i, name in enumerate(names) if name.lower() == "background"), None)
    picture = overlay(picture, small, list(colors), background=background, ignore_index=NOT_ANALYSED)
    with atomic_output(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
