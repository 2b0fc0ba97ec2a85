"""Nucleus-aware pretraining (UNITPathSSL): fit pseudo masks, train the translator, export G_BA.

Run folder::

    pseudo_masks.json       the fitted nucleus statistics (what domain A is drawn from)
    config.yaml, run.json   resolved config, versions
    checkpoints/            the whole translator (resumable like every run)
    samples/step_*.png      at every evaluation: pseudo masks | G_AB(masks) | real H&E |
                            G_BA(real) mask image | G_BA's nuclei outlined on the real tiles
    translator.safetensors  all sub-networks
    model.safetensors       G_BA as a nucleus segmenter: `pathseg nuclei train --init RUN`
    report.html
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pathseg.config import to_plain
from pathseg.data.datasets import UnlabeledImageDataset, _split_key
from pathseg.data.folders import find_images
from pathseg.data.instances import load_instances
from pathseg.data.io import image_size, read_image, write_image
from pathseg.data.targets import hover_maps
from pathseg.data.transforms import AugmentConfig, build_train_transform, from_tensor, to_tensor
from pathseg.engine import fit, write_run_info
from pathseg.engine.distributed import is_main_process
from pathseg.errors import ConfigError, DataError
from pathseg.inference.instances import HoverSettings, hover_instances
from pathseg.methods.nuclei.config import NucleiConfig, NucleiDataSection, NucleusPretrainConfig
from pathseg.methods.nuclei.pseudo_masks import NucleusStatistics, PseudoMaskSource, fit_statistics
from pathseg.methods.nuclei.train import split_samples
from pathseg.methods.nuclei.translator import Translator, export_segmenter, mask_image, render_mask_image
from pathseg.metrics import NucleusEvaluator
from pathseg.models.weights import save_weights
from pathseg.report.figures import image_grid, outline_objects
from pathseg.report.html import image_tag
from pathseg.report.run_report import build_run_report

__all__ = ["TranslationDataset", "pretrain", "pseudo_mask_statistics"]

STATISTICS_FILE = "pseudo_masks.json"
_FIXED = 1_000_000_000  # pseudo-mask indices of the sample grids, far from the training draws


class TranslationDataset(Dataset):
    """Items pair a real crop (domain B) with an independent pseudo mask (domain A):
    ``{"image", "mask_image", "nucleus", "hv"}``. The pseudo mask is drawn from the item's
    augmentation seed, so every step sees new masks and a resumed run sees the same ones."""

    def __init__(self, real: UnlabeledImageDataset, masks: PseudoMaskSource, seed: int = 0) -> None:
        self.real, self.masks, self.seed = real, masks, seed

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, rng = _split_key(key, self.seed)
        pseudo_index = int(rng.integers(_FIXED)) if rng is not None else index
        return {"image": self.real[key]["image"], **pseudo_item(self.masks(pseudo_index))}


def pseudo_item(instances: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "mask_image": torch.from_numpy(mask_image(instances)),
        "nucleus": torch.from_numpy((instances > 0).astype(np.int64)),
        "hv": torch.from_numpy(hover_maps(instances)),
    }


def labelled_nuclei_config(config: NucleusPretrainConfig) -> NucleiConfig:
    """The fine-tuning selection of labelled images: ``label_fraction`` of ``labelled`` with the
    same seed and rule as ``pathseg nuclei train`` (no validation split)."""
    if config.data.labelled is None:
        raise ConfigError(
            "data.labelled is not set: give --labelled FOLDER (images/ + instances/, annotations/ or "
            "masks/) whose nuclei the pseudo masks imitate"
        )
    data = NucleiDataSection(
        train=config.data.labelled, val_fraction=0, label_fraction=config.data.label_fraction
    )
    return NucleiConfig(data=data, train={"seed": config.train.seed})


def pseudo_mask_statistics(config: NucleusPretrainConfig, run_dir: Path) -> NucleusStatistics:
    """Fit (or, on resume, reload) the nucleus statistics of the labelled images."""
    path = run_dir / STATISTICS_FILE
    if path.exists():
        return NucleusStatistics.load(path)
    labelled, _, _ = split_samples(labelled_nuclei_config(config))
    maps = [load_instances(s, shape=image_size(s.image), quiet=True) for s in labelled]
    # Counts are taken in windows of fit_window px, or of the smallest image where images are smaller.
    window = min(config.data.fit_window, *(min(m.shape) for m in maps))
    statistics = fit_statistics(maps, window=window, seed=config.train.seed)
    if is_main_process():
        statistics.save(path)
    return statistics


def real_images(config: NucleusPretrainConfig) -> list[Path]:
    """Domain B: the labelled folder's images (labels unused) and every ``images`` folder."""
    folders = [Path(config.data.labelled)] if config.data.labelled is not None else []
    folders += [Path(folder) for folder in config.data.images]
    paths: list[Path] = []
    for folder in folders:
        inner = folder / "images"
        found = find_images(inner if inner.is_dir() else folder)
        if not found:
            raise DataError(folder, "no readable images (looked in images/ and the folder itself)")
        paths += found
    small = [p for p in paths if min(image_size(p)) < config.data.crop_size]
    if small:
        raise DataError(small[0], f"smaller than data.crop_size={config.data.crop_size}")
    return paths


def _monitor_crops(config: NucleusPretrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centre crops (2x the training crop) of the first ``monitor_images`` monitor images with
    their true instances."""
    if config.data.monitor is None:
        return []
    from pathseg.data.instances import discover_instance_dataset

    side = 2 * config.data.crop_size
    crops = []
    for sample in discover_instance_dataset(config.data.monitor)[: config.data.monitor_images]:
        image = read_image(sample.image)
        truth = load_instances(sample, shape=image.shape[:2], quiet=True)
        top, left = (max(0, (n - side) // 2) for n in image.shape[:2])
        crops.append(
            (image[top : top + side, left : left + side], truth[top : top + side, left : left + side])
        )
    return crops


def _instances(hover: torch.Tensor, settings: HoverSettings) -> np.ndarray:
    probability = hover[:2].float().softmax(dim=0)[1].cpu().numpy()
    return hover_instances(probability, hover[2:].float().cpu().numpy(), settings)


def pretrain(
    config: NucleusPretrainConfig, resume: bool = False, show_progress: bool = True
) -> dict[str, Any]:
    """Fit the pseudo masks, train the translator, export G_BA; see the module docstring."""
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, to_plain(config))
    statistics = pseudo_mask_statistics(config, run_dir)
    crop = config.data.crop_size
    torch.manual_seed(config.train.seed)
    translator = Translator(config.translator, config.loss)
    if crop % translator.size_multiple:
        raise ConfigError(f"data.crop_size={crop} must be a multiple of {translator.size_multiple}")

    augment = AugmentConfig(crop_size=crop, **config.data.augment.model_dump())
    real = UnlabeledImageDataset(real_images(config), build_train_transform(augment), seed=config.train.seed)
    masks = PseudoMaskSource(statistics, crop, seed=config.train.seed)
    dataset = TranslationDataset(real, masks, seed=config.train.seed)

    count = config.samples.count
    fixed_instances = [masks(_FIXED + i) for i in range(count)]
    fixed_masks = torch.stack([torch.from_numpy(mask_image(m)) for m in fixed_instances])
    fixed_z = torch.randn(
        count, config.translator.z_dim, generator=torch.Generator().manual_seed(config.samples.seed)
    )
    fixed_real = torch.stack([real[(i % len(real), 10_000 + i)]["image"] for i in range(count)])
    monitor = _monitor_crops(config)
    settings = HoverSettings(**config.post.model_dump())
    samples_dir = run_dir / "samples"
    samples_dir.mkdir(exist_ok=True)

    def loss_fn(net: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return net(batch)

    def evaluate_fn(net: nn.Module, step: int) -> dict[str, float]:
        device = next(net.parameters()).device
        fake = net.generate(fixed_masks.to(device), net.mapping(fixed_z.to(device)))
        hover_fake, _ = net.read(fake)
        hover_real, read_real = net.read(fixed_real.to(device))
        synthetic = NucleusEvaluator()
        for i in range(count):
            synthetic.update(_instances(hover_fake[i], settings), fixed_instances[i], f"pseudo{i}")
        real_tiles = [from_tensor(x) for x in fixed_real]
        rows = [
            [render_mask_image(m) for m in fixed_masks],
            [from_tensor(x.float().cpu()) for x in fake],
            real_tiles,
            [render_mask_image(m) for m in read_real],
            [
                outline_objects(t, _instances(h, settings))
                for t, h in zip(real_tiles, hover_real, strict=True)
            ],
        ]
        grid = image_grid([tile for row in rows for tile in row], columns=count)
        write_image(samples_dir / f"step_{step:07d}.png", grid)
        metrics = {"pseudo_aji": synthetic.summary()["aji"]}
        if monitor:
            scored = NucleusEvaluator()
            for i, (image, truth) in enumerate(monitor):
                hover, _ = net.read(to_tensor(image)[None].to(device))
                scored.update(_instances(hover[0], settings), truth, f"monitor{i}")
            summary = scored.summary()
            metrics.update(monitor_aji=summary["aji"], monitor_pq=summary["pq"])
        return metrics

    result = fit(
        translator,
        dataset,
        loss_fn,
        run_dir,
        config.train,
        evaluate_fn=evaluate_fn,
        resume=resume,
        show_progress=show_progress,
    )
    outcome: dict[str, Any] = {"run_dir": str(run_dir), "final_step": result.final_step}
    if is_main_process():
        # fit exported the whole translator as model.safetensors; that name belongs to G_BA.
        (run_dir / "model.safetensors").replace(run_dir / "translator.safetensors")
        save_weights(export_segmenter(result.model), run_dir / "model.safetensors")
        grids = sorted(samples_dir.glob("step_*.png"))
        if grids:
            shutil.copyfile(grids[-1], run_dir / "samples.png")
        outcome["report"] = str(write_report(run_dir, config, statistics))
        outcome["images_per_s"] = _images_per_second(run_dir)
    return outcome


def _images_per_second(run_dir: Path) -> float | None:
    """Training throughput (pseudo-mask + real pairs per second) over the logged windows."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    rates = [r["images_per_s"] for r in rows if r.get("split", "train") == "train" and "images_per_s" in r]
    return float(np.median(rates)) if rates else None


def write_report(run_dir: Path, config: NucleusPretrainConfig, statistics: NucleusStatistics) -> Path:
    """HTML page: the fitted statistics, sample grids over training, losses."""
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    shown = grids if len(grids) <= 4 else [grids[i * (len(grids) - 1) // 3] for i in range(4)]
    body = "".join(
        image_tag(
            p,
            run_dir,
            f"step {p.stem[5:].lstrip('0') or 0}: pseudo masks, G_AB(masks), real H&E, G_BA(real), "
            "G_BA's nuclei on the real tiles",
        )
        for p in shown
    )
    fitted = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
        for k, v in statistics.to_dict().items()
        if isinstance(v, int | float)
    )
    intro = (
        f"<p>Unpaired translation between pseudo nucleus masks and real H&amp;E "
        f"({config.data.crop_size} px crops), guided by instance segmentation of the generated images "
        f"(weight {config.loss.instance_guidance}), cycle weight {config.loss.cycle}. Fine-tune with "
        f"<code>pathseg nuclei train --init {html.escape(str(run_dir))}</code>.</p>"
        f"<table><tr><th>pseudo-mask statistic</th><th>fitted value</th></tr>{fitted}</table>"
    )
    return build_run_report(
        run_dir,
        f"pathseg nucleus pretraining {run_dir.name}",
        [("What this is", intro), ("Samples", body)],
        monitor="monitor_aji" if config.data.monitor is not None else "pseudo_aji",
    )
