"""Ambiguous segmentation on BU-BIL Dataset1: CIMD against a Probabilistic U-Net and a single-answer net.

BU-BIL Dataset1 holds 35 phase-contrast images, each segmented by 10 experts (5 people, each
with ImageJ and with Amira). A method that knows the annotators disagree should draw masks that
spread like theirs; a method with one answer cannot. Per seed the images are split at random
into held-out test images and training images (the split is by whole image, before cropping),
and three methods are trained on the same training images, crops and wall-clock budget
(``train.budget_minutes``; evaluation is not part of it):

* ``cimd``: :func:`pathseg.methods.ambiguous.train` (denoiser + trained prior/posterior over z,
  CIMD's defaults: linear schedule, T = 1000, lr 1e-4, EMA 0.9999 with the engine's warm-up);
  masks drawn with DDIM (``--cimd-steps`` network evaluations, default 20 on CPU: one
  evaluation of 16 samples of a 256x208 image takes seconds on one core).
* ``prob_unet``: :class:`~pathseg.models.prob_unet.ProbUNet` (paper widths, lr 1e-4) trained by
  :func:`~pathseg.engine.fit` with :func:`~pathseg.models.prob_unet.make_prob_unet_loss`, one
  random annotator's mask per item. ``beta = 1 / (crop * crop)``: the paper sums the
  cross-entropy over pixels, the loss here averages it (see the loss's docstring).
* ``deterministic``: pathseg's default supervised network (``resunet_resnet18``, light decoder),
  CE + Dice, lr 1e-3, EMA 0.999, one random annotator's mask per item. Its N "samples" are N
  copies of its argmax: the score of a model with a single answer.

None of them selects a checkpoint on validation images (all training images are used to train;
the final EMA weights are scored). Every test image is scored at the working resolution
(``--scale`` of native, default 0.25, so both the masks and the annotators are downsampled by
nearest neighbour) with N = ``--samples`` masks against the 10 experts: GED (squared, ``i = j``
pairs included), HM-IoU, CI with its parts ``s_c``, ``d_max``, ``d_a`` and the calibration error
``ece`` of the samples' mean. Mask value 24, which one expert mask holds (Person5_Amira, B04),
is ignored (``data.ignore_values=[24]``). Then, for the CIMD model of the first seed, the sampler curve:
DDPM over all T steps and DDIM at 250, 100, 50, 20 and 10 network evaluations, on the first
``--curve-images`` test images (default 1: DDPM's 1000 evaluations dominate a CPU run), with the
seconds each image took.

Writes ``benchmarks/results/cimd_bubil[_gpu].json`` (one record per method and seed, one per
sampler setting) and ``cimd_bubil[_gpu]_sampler.png`` (GED against network evaluations).

Usage::

    python benchmarks/cimd_bubil.py                      # CPU defaults
    python benchmarks/cimd_bubil.py --quick --out /tmp/cimd_quick.json --work /tmp/cimd_quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS, run_paths, write_results
from pathseg.config import resolve_config
from pathseg.data.annotators import (
    MultiAnnotatorDataset,
    MultiSample,
    bubil_class_map,
    discover_multi_annotator,
)
from pathseg.data.classes import ClassMap
from pathseg.data.transforms import AugmentConfig, build_train_transform, to_tensor
from pathseg.engine import TrainerConfig, fit
from pathseg.losses import build_loss
from pathseg.methods.ambiguous import AmbiguousConfig, load_ambiguous_run, train
from pathseg.methods.ambiguous.sample import draw_masks, image_generator, make_sampler, scored_annotators
from pathseg.metrics.ambiguity import AmbiguityEvaluator, calibration_error
from pathseg.models import create_model
from pathseg.models.prob_unet import ProbUNet, make_prob_unet_loss

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (
    Path(os.environ.get("PATHSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "bubil" / "Dataset1"
)
# CIMD variants: the config overrides over ``pathseg ambiguous train``'s defaults. ``cimd`` keeps the
# paper's objective (the network predicts the noise epsilon); ``cimd_x0`` predicts the clean mask.
CIMD_VARIANTS = {"cimd": [], "cimd_x0": ["diffusion.prediction=sample"]}
METHODS = (*CIMD_VARIANTS, "prob_unet", "deterministic")
RELIABILITY_BINS = 10
REPORTED = ("ged", "hm_iou", "ci", "s_c", "d_max", "d_a", "ece", "ged_cross", "ged_within_samples")
IGNORE_VALUES = [24]
DDIM_CURVE = (250, 100, 50, 20, 10)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Settings:
    """Sizes of one benchmark scale (``cpu`` defaults, or ``--quick`` for a smoke run)."""

    crop: int
    batch: int
    diffusion_steps: int  # T
    cimd_steps: int  # DDIM network evaluations per sample in the main comparison
    test_images: int
    curve_images: int
    cimd_model: dict
    prob_unet_model: dict


CPU = Settings(
    crop=128,
    batch=8,
    diffusion_steps=1000,
    cimd_steps=20,
    test_images=9,
    curve_images=1,
    cimd_model={},  # CIMD's defaults: base 32, mults [1, 2, 2, 4], encoder 32-192
    prob_unet_model={},  # the paper's widths 32, 64, 128, 192
)
QUICK = Settings(
    crop=64,
    batch=4,
    diffusion_steps=50,
    cimd_steps=10,
    test_images=2,
    curve_images=1,
    cimd_model={"base_channels": 8, "channel_mults": [1, 2], "encoder_filters": [8, 16]},
    prob_unet_model={"base_channels": 8, "channel_mults": [1, 2], "encoder_filters": [8, 16]},
)


# ---------------------------------------------------------------------------- data


def split_images(samples: list[MultiSample], test_images: int, seed: int) -> tuple[list, list]:
    """(train, test) by whole image: ``test_images`` drawn at random with ``seed``."""
    if not 0 < test_images < len(samples):
        raise SystemExit(f"--test-images must be between 1 and {len(samples) - 1}, got {test_images}")
    order = np.random.default_rng(seed).permutation(len(samples))
    test = sorted(order[:test_images].tolist())
    train = sorted(order[test_images:].tolist())
    return [samples[i] for i in train], [samples[i] for i in test]


def link_bubil_folder(samples: list[MultiSample], folder: Path) -> Path:
    """A BU-BIL-layout folder of symbolic links holding only ``samples`` (what
    ``pathseg ambiguous train`` reads as ``data.train``); the data are not copied."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "RawImages").mkdir(parents=True)
    for sample in samples:
        (folder / "RawImages" / sample.image.name).symlink_to(sample.image.resolve())
        for annotator, mask in sample.masks.items():
            target = folder / "ExpertsAnnotations" / annotator / mask.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(mask.resolve())
    return folder


def pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right of ``(B, C, H, W)`` to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple), mode="reflect")


# ---------------------------------------------------------------------------- training


def train_cimd(args, variant: str, settings: Settings, train_set: list[MultiSample], seed: int, work: Path):
    """CIMD through ``pathseg.methods.ambiguous.train``; returns (fit outcome, config)."""
    run_dir = work / f"{variant}_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = link_bubil_folder(train_set, work / f"data_{seed}" / "train")
    overrides = [
        f"data.train={folder}",
        "data.layout=bubil",
        f"data.ignore_values={json.dumps(IGNORE_VALUES)}",
        "data.val_fraction=0",
        f"data.scale={args.scale}",
        f"data.crop_size={settings.crop}",
        f"model={json.dumps(settings.cimd_model)}",
        f"diffusion.num_steps={settings.diffusion_steps}",
        "train.steps=10000000",  # the budget ends the run
        f"train.budget_minutes={args.budget_min}",
        f"train.batch_size={settings.batch}",
        "train.checkpoint_every=10000000",
        f"train.seed={seed}",
        f"sample.steps={settings.cimd_steps}",
        f"output={run_dir}",
        *CIMD_VARIANTS[variant],
        *args.cimd_set,
    ]
    config = resolve_config(AmbiguousConfig, None, overrides)
    outcome = train(config, show_progress=False)
    return outcome, config


def train_baseline(
    method: str, args, settings: Settings, dataset: MultiAnnotatorDataset, seed: int, work: Path
):
    """``prob_unet`` or ``deterministic`` with ``engine.fit`` on a random annotator per item."""
    torch.manual_seed(seed)
    ignore_index = dataset.class_map.ignore_index
    if method == "prob_unet":
        model: nn.Module = ProbUNet(num_classes=2, **settings.prob_unet_model)
        loss_fn = make_prob_unet_loss(beta=1.0 / settings.crop**2, ignore_index=ignore_index)
        lr, ema = 1e-4, 0.999
    else:
        model = create_model("resunet_resnet18", num_classes=2)
        terms = build_loss({"ce": 1.0, "dice": 1.0}, ignore_index)

        def loss_fn(net, batch):
            return terms(net(batch["image"]), batch["mask"]), {}

        lr, ema = 1e-3, 0.999
    config = TrainerConfig(
        steps=10**7,  # the budget ends the run
        budget_minutes=args.budget_min,
        batch_size=settings.batch,
        lr=lr,
        warmup_steps=50,
        ema_decay=ema,
        checkpoint_every=10**7,
        seed=seed,
    )
    run_dir = work / f"{method}_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    result = fit(model, dataset, loss_fn, run_dir, config, show_progress=False)
    outcome = {"final_step": result.final_step, "train_seconds": result.train_seconds}
    return result.model.eval(), outcome


# ---------------------------------------------------------------------------- sampling


@torch.no_grad()
def baseline_masks(method: str, model: nn.Module, image: np.ndarray, n: int, seed: int, stem: str):
    """``(n, H, W)`` class indices for a working-resolution image: prior draws of the ProbUNet, or
    ``n`` copies of the deterministic network's argmax."""
    x = to_tensor(np.ascontiguousarray(image)).unsqueeze(0)
    multiple = model.size_multiple if method == "prob_unet" else 32
    padded = pad_to(x, multiple).to(DEVICE)
    height, width = image.shape[:2]
    if method == "prob_unet":
        logits = model.sample(padded, n, image_generator(seed, stem))[:, 0]
        return logits.argmax(dim=1)[:, :height, :width].cpu().numpy().astype(np.uint8)
    answer = model(padded).argmax(dim=1)[0, :height, :width].cpu().numpy().astype(np.uint8)
    return np.repeat(answer[None], n, axis=0)


def center_crop(array: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size`` x ``size`` window of an ``(H, W, ...)`` array (all of it if smaller)."""
    if size is None:
        return array
    top, left = max(0, (array.shape[0] - size) // 2), max(0, (array.shape[1] - size) // 2)
    return array[top : top + size, left : left + size]


def score(
    draw, test: MultiAnnotatorDataset, class_map: ClassMap, limit: int | None = None, crop: int | None = None
):
    """Metric means over the test images and mean seconds per image; ``draw(image, stem)`` gives
    ``(N, H, W)`` class indices at the working resolution (foreground: class index > 0). With
    ``crop`` only the central ``crop`` x ``crop`` window of every image is sampled and scored."""
    evaluator = AmbiguityEvaluator(include_diagonal=True, ci_formula="harmonic")
    seconds = []
    bins = np.zeros((3, RELIABILITY_BINS))  # pixels, sum of p, sum of annotator frequency
    for index in range(len(test) if limit is None else min(limit, len(test))):
        image, masks = test.load(index)
        image, masks = np.ascontiguousarray(center_crop(image, crop)), center_crop(masks, crop)
        stem = test.samples[index].stem
        started = time.perf_counter()
        drawn = draw(image, stem)
        seconds.append(time.perf_counter() - started)
        truth, ignore = scored_annotators(masks, class_map.ignore_index)
        evaluator.update(drawn > 0, truth, stem, ignore=ignore)
        calibration = calibration_error((drawn > 0).mean(axis=0), truth, RELIABILITY_BINS, ignore)
        counts = calibration["bin_counts"]
        bins += [
            counts,
            np.nan_to_num(calibration["bin_predicted"]) * counts,
            np.nan_to_num(calibration["bin_observed"]) * counts,
        ]
    summary = evaluator.summary()
    reliability = {
        "bin_edges": np.linspace(0, 1, RELIABILITY_BINS + 1).round(3).tolist(),
        "pixels": bins[0].astype(int).tolist(),
        "predicted": [round(float(p / n), 4) if n else None for n, p in zip(*bins[:2], strict=True)],
        "observed": [round(float(f / n), 4) if n else None for n, f in zip(bins[0], bins[2], strict=True)],
    }
    return {k: summary[k] for k in REPORTED}, float(np.mean(seconds)), reliability


# ---------------------------------------------------------------------------- records


def record(method: str, seed: int, metrics: dict, outcome: dict, args, test_set, **extra) -> dict:
    steps, seconds = outcome["final_step"], outcome["train_seconds"]
    return {
        "method": method,
        "dataset": "bubil_dataset1",
        "split": "test",
        "label_fraction": 1.0,
        "seed": seed,
        "metrics": metrics,
        "train_steps": steps,
        "wall_s": round(seconds, 1),
        "images_per_s": round(steps * args.settings.batch / seconds, 2) if seconds else None,
        "budget_min": args.budget_min,
        "samples": args.samples,
        "test_images": [s.stem for s in test_set],
        **extra,
    }


def sampler_curve(
    variant: str, model, config: AmbiguousConfig, test, class_map, args, seed: int, outcome, test_set
):
    """GED and time per image of the seed's CIMD model for DDPM (all T) and DDIM step counts."""
    total = config.diffusion.num_steps
    settings = [("ddpm", total)] + [("ddim", k) for k in DDIM_CURVE if k <= total]
    records = []
    for method, steps in settings:
        sampler = make_sampler(config, method, steps)

        def draw(image, stem, sampler=sampler):
            return draw_masks(model, image, 1.0, sampler, args.samples, image_generator(seed, stem))

        metrics, per_image, _ = score(draw, test, class_map, args.settings.curve_images, args.curve_crop)
        print(f"   {variant} {method} {steps:4d} evals: GED {metrics['ged']:.4f}, {per_image:.2f} s/img")
        records.append(
            record(
                variant,
                seed,
                metrics,
                outcome,
                args,
                test_set[: args.settings.curve_images],
                sampler=method,
                network_evaluations=steps,
                seconds_per_image=round(per_image, 3),
                prediction=config.diffusion.prediction,
                curve=True,
            )
        )
    return records


def plot_curve(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5.6, 3.8), dpi=110)
    for variant, colour in zip(CIMD_VARIANTS, ("tab:blue", "tab:orange"), strict=True):
        for sampler, style in (("ddim", "o-"), ("ddpm", "s")):
            rows = [r for r in records if r["method"] == variant and r["sampler"] == sampler]
            rows.sort(key=lambda r: r["network_evaluations"])
            if rows:
                axis.plot(
                    [r["network_evaluations"] for r in rows],
                    [r["metrics"]["ged"] for r in rows],
                    style,
                    color=colour,
                    label=f"{variant} {sampler.upper()}",
                )
    axis.set_xscale("log")
    axis.set_xlabel("network evaluations per sample")
    axis.set_ylabel("GED (lower is better)")
    axis.set_title("CIMD on BU-BIL: sampler steps vs GED")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(records: list[dict], path: Path) -> None:
    """Reliability diagram per method (pixels pooled over seeds and test images): mean soft
    prediction against the annotators' foreground frequency in the same bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    axis.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    for method in METHODS:
        rows = [r for r in records if r["method"] == method and "reliability" in r]
        if not rows:
            continue
        pixels = np.sum([r["reliability"]["pixels"] for r in rows], axis=0)
        totals = []
        for key in ("predicted", "observed"):
            values = np.array([[np.nan if v is None else v for v in r["reliability"][key]] for r in rows])
            counts = np.array([r["reliability"]["pixels"] for r in rows])
            totals.append(np.nansum(values * counts, axis=0))
        used = pixels > 0
        ece = np.mean([r["metrics"]["ece"] for r in rows])
        axis.plot(
            totals[0][used] / pixels[used],
            totals[1][used] / pixels[used],
            "o-",
            label=f"{method} (ECE {ece:.3f})",
        )
    axis.set_xlabel("mean of the N samples (predicted foreground frequency)")
    axis.set_ylabel("annotators' foreground frequency")
    axis.set_title("BU-BIL test pixels: calibration")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_figures(out: Path, records: list[dict]) -> None:
    curve = [r for r in records if r.get("curve")]
    if curve:
        plot_curve(curve, out.with_name(f"{out.stem}_sampler.png"))
    if any("reliability" in r for r in records):
        plot_reliability(records, out.with_name(f"{out.stem}_calibration.png"))


def notes(args) -> str:
    s = args.settings
    return (
        f"BU-BIL Dataset1, 10 expert masks per image (value 24 ignored); per seed {s.test_images} of "
        f"35 images held out at random for testing, the rest used to train every method (no "
        f"validation or checkpoint selection: final EMA weights). Images at {args.scale:g} of native "
        f"resolution for training and scoring (annotator masks downsampled by nearest neighbour), "
        f"{s.crop} px random crops with flips/rot90, batch {s.batch}, bf16 autocast, "
        f"{args.budget_min:g} min of training per method and seed (train.budget_minutes). "
        f"cimd: pathseg.methods.ambiguous.train with CIMD's defaults (T={s.diffusion_steps}, linear "
        f"schedule, lr 1e-4, EMA 0.9999 with warm-up, KL weight 1, model {json.dumps(s.cimd_model)} "
        f"over the defaults), masks by DDIM with {s.cimd_steps} network evaluations. prob_unet: "
        f"ProbUNet {json.dumps(s.prob_unet_model)} over the paper widths, lr 1e-4, EMA 0.999, "
        f"beta = 1/(crop*crop) = {1 / s.crop**2:.3g} (the paper's pixel-summed CE in per-pixel-mean "
        "units). deterministic: resunet_resnet18 (light decoder), CE+Dice, lr 1e-3, EMA 0.999; its "
        f"{args.samples} samples are copies of one argmax. Metrics: N={args.samples} samples per "
        "image, GED is the squared distance with i=j pairs, CI the harmonic mean, ece of the "
        "samples' mean vs the annotators' frequency. Sampler records (curve: true) use the first "
        f"seed's model of each cimd variant on its first {s.curve_images} test images"
        + (f" (their central {args.curve_crop} px only)" if args.curve_crop else "")
        + "; seconds_per_image is the wall "
        f"time of drawing {args.samples} masks for one image."
        + " cimd_x0: cimd with diffusion.prediction=sample (the network predicts the clean mask "
        "instead of the noise; everything else equal)."
        + (f" cimd overrides: {', '.join(args.cimd_set)}." if args.cimd_set else "")
        + (" QUICK smoke run: tiny models and budgets, not a result." if args.quick else "")
        + (" Reduced for a 2-core CPU." if not torch.cuda.is_available() else "")
    )


def run_method(method: str, args, train_set, test_set, seed: int, work: Path) -> list[dict]:
    """Train one method on one split, score it on the test images; for the first seed's CIMD
    model also the sampler curve. Returns the records."""
    class_map = bubil_class_map(IGNORE_VALUES)
    if method in CIMD_VARIANTS:
        outcome, config = train_cimd(args, method, args.settings, train_set, seed, work)
        model, _ = load_ambiguous_run(Path(outcome["run_dir"]))
        model = model.to(DEVICE)
        sampler = make_sampler(config, "ddim", args.settings.cimd_steps)

        def draw(image, stem):
            return draw_masks(model, image, 1.0, sampler, args.samples, image_generator(seed, stem))

    else:
        augment = AugmentConfig(crop_size=args.settings.crop, flips=True, rotate90=True)
        dataset = MultiAnnotatorDataset(
            train_set,
            class_map,
            transform=build_train_transform(augment, class_map.ignore_index),
            scale=args.scale,
            seed=seed,
        )
        dataset.preload()
        model, outcome = train_baseline(method, args, args.settings, dataset, seed, work)

        def draw(image, stem):
            return baseline_masks(method, model, image, args.samples, seed, stem)

    # The test images and masks at the working resolution: (image, (H, W, M) class indices).
    test = MultiAnnotatorDataset(test_set, class_map, scale=args.scale, annotator="all")
    metrics, per_image, reliability = score(draw, test, class_map)
    print(
        f"   {method:13s} seed {seed}: {outcome['final_step']} steps, "
        + ", ".join(f"{k} {metrics[k]:.4f}" for k in REPORTED[:7])
        + f", {per_image:.2f} s/image",
        flush=True,
    )
    extra: dict = {"seconds_per_image": round(per_image, 3), "reliability": reliability}
    if method in CIMD_VARIANTS:
        extra |= {
            "sampler": "ddim",
            "network_evaluations": args.settings.cimd_steps,
            "prediction": config.diffusion.prediction,
        }
    records = [record(method, seed, metrics, outcome, args, test_set, **extra)]
    if method in CIMD_VARIANTS and seed == args.seeds[0] and not args.no_curve:
        records += sampler_curve(method, model, config, test, class_map, args, seed, outcome, test_set)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="one split and init per seed")
    parser.add_argument("--budget-min", type=float, default=None, help="training minutes per method and seed")
    parser.add_argument("--samples", type=int, default=None, help="masks drawn per test image (N)")
    parser.add_argument("--scale", type=float, default=None, help="working resolution / native")
    parser.add_argument("--test-images", type=int, default=None, help="held-out images per split")
    parser.add_argument("--crop", type=int, default=None, help="training crop side at the working resolution")
    parser.add_argument("--cimd-steps", type=int, default=None, help="DDIM evaluations for cimd's scores")
    parser.add_argument("--curve-images", type=int, default=None, help="test images of the sampler curve")
    parser.add_argument(
        "--curve-crop",
        type=int,
        default=None,
        help="sample the curve on the central CROP x CROP pixels of each image (working resolution): "
        "DDPM's T evaluations cost minutes per image on a CPU",
    )
    parser.add_argument(
        "--cimd-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for cimd (as `pathseg ambiguous train --set`), "
        "e.g. diffusion.prediction=sample",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-curve", action="store_true", help="skip the sampler curve")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="only fold the records of these result files (parallel runs, each with its own --out) "
        "into the result file, and redraw its figures",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (a few minutes on one core)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.merge:
        merge(args.out or RESULTS / "cimd_bubil.json", args.merge)
        return
    args.settings = replace(QUICK if args.quick else CPU)
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    args.budget_min = args.budget_min or (0.1 if args.quick else 8.0)
    args.samples = args.samples or (4 if args.quick else 16)
    args.scale = args.scale or (0.125 if args.quick else 0.25)
    for key in ("crop", "test_images", "cimd_steps", "curve_images"):
        if getattr(args, key):
            setattr(args.settings, key, getattr(args, key))
    if args.threads:
        torch.set_num_threads(args.threads)
    _, out, work = run_paths("cimd_bubil", args.out, args.work)
    reduced = args.quick or DEVICE.type == "cpu"

    samples = discover_multi_annotator(args.data, layout="bubil", pool="experts")
    # Seed and method pairs already in ``out`` (an interrupted run) are kept and not rerun.
    previous = json.loads(out.read_text())["records"] if out.exists() and not args.quick else []
    records: list[dict] = list(previous)
    done = {(r["method"], r["seed"]) for r in previous if not r.get("curve")}
    for seed in args.seeds:
        train_set, test_set = split_images(samples, args.settings.test_images, seed)
        print(f"== seed {seed}: {len(train_set)} training, {len(test_set)} test images", flush=True)
        # The held-out images as a BU-BIL folder, for `pathseg ambiguous sample` on the run folders.
        link_bubil_folder(test_set, work / f"data_{seed}" / "test")
        for method in args.methods:
            if (method, seed) in done:
                continue
            records += run_method(method, args, train_set, test_set, seed, work)
            write_results(out, "cimd_bubil", reduced, notes(args), records)
            write_figures(out, records)
    print(f"wrote {out}")


def summarise(records: list[dict]) -> dict:
    """Mean and standard deviation over seeds of the main metrics, per method (main records only)."""
    out = {}
    for method in METHODS:
        rows = [r for r in records if r["method"] == method and not r.get("curve")]
        if rows:
            out[method] = {"seeds": sorted(r["seed"] for r in rows)} | {
                key: {
                    "mean": round(float(np.mean([r["metrics"][key] for r in rows])), 4),
                    "std": round(float(np.std([r["metrics"][key] for r in rows])), 4),
                }
                for key in ("ged", "hm_iou", "ci", "ece")
            }
    return out


def merge(out: Path, others: list[Path]) -> None:
    """Fold the records of ``others`` into ``out`` (replacing the same method, seed, sampler and
    evaluations) and redraw the figures; the commands of all runs are kept."""
    payload = json.loads(out.read_text()) if out.exists() else json.loads(others[0].read_text())

    def key(r: dict) -> tuple:
        return r["method"], r["seed"], r.get("sampler"), r.get("network_evaluations"), bool(r.get("curve"))

    records = payload["records"] if out.exists() else []
    commands = [payload["command"]] if out.exists() else []
    for other in others:
        merged = json.loads(other.read_text())
        commands.append(merged["command"])
        for record in merged["records"]:
            records = [r for r in records if key(r) != key(record)]
            records.append(record)
    payload["records"] = records
    payload["command"] = "; ".join(dict.fromkeys(commands))
    payload["summary"] = summarise(records)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    write_figures(out, records)
    print(f"wrote {out} ({len(records)} records)")


if __name__ == "__main__":
    main()
