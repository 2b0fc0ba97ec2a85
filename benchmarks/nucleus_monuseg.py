"""Nucleus instance segmentation on MoNuSeg: pathseg's nucleus segmenter against MONAI's HoVerNet.

MoNuSeg holds 1000x1000 H&E tiles at 40x: 30 training images (13 with polygon annotations, 17
with binary masks that only train) and 14 test images with polygons. Both methods get the same
training images (``--label-fraction`` draws the same subset with the seed), the same 256 px
crops and augmentations (pathseg's :class:`~pathseg.methods.nuclei.data.NucleusDataset`: flips,
90-degree turns, colour and stain jitter, HoVer targets computed on the moved instance map), the
same wall-clock budget of optimizer steps (``train.budget_minutes``; test prediction is not part
of it) and the same engine settings (:func:`~pathseg.engine.fit`: AdamW lr 1e-3, weight decay
1e-4, 50 warm-up steps, cosine schedule, batch 8, bf16 autocast, EMA 0.999 of the weights, the
final EMA weights are scored). No validation split and no checkpoint selection for either
(``data.val_fraction=0``): every training image trains.

* ``supervised``: :func:`pathseg.methods.nuclei.train` (default ``resunet_resnet18`` with one
  shared decoder and four outputs, HoVer loss CE + Dice + MSE + MSGE), whole test images by
  Gaussian-blended sliding windows, instances by :func:`~pathseg.inference.instances.hover_instances`.
* ``monai_hovernet``: :class:`monai.networks.nets.HoVerNet` (``mode="fast"``, which takes exactly
  256 px; ``decoder_padding=True`` so its output is 256 px too, as in the CoNIC variant; no
  pretrained weights, no type branch) trained with
  :class:`monai.apps.pathology.losses.HoVerNetLoss` (its default weights) on the same batches:
  ``nucleus_prediction`` target = one-hot of the nucleus mask, ``horizontal_vertical`` target =
  pathseg's h/v maps (same channel order and range as MONAI's). Test images are predicted by the
  same sliding windows (the dict output concatenated to four channels) and turned into instances
  by MONAI's :class:`~monai.apps.pathology.transforms.HoVerNetInstanceMapPostProcessing` (its
  defaults: argmax mask, objects under 10 px dropped, marker threshold 0.4, radius 2).

Both are scored by :class:`~pathseg.metrics.NucleusEvaluator` (AJI, PQ = DQ x SQ, Dice; the
``pooled_*`` scores pool matches over all images) against the test polygons.

Cost on one CPU thread (256 px, batch 8, bf16, measured on synthetic batches): a pathseg step
takes ~1 s, a HoVerNet step (ResNet-50 encoder, three full decoders) ~90 s, so a 12 min CPU
budget gives HoVerNet under 10 steps: there the comparison measures what each method reaches at
equal cost, not what HoVerNet reaches converged. HoVerNet's test prediction takes ~1.5-2 min per
1000 px image on one thread (~3.5 s per 256 px window in fp32, plus MONAI's post-processing).

Writes ``benchmarks/results/nucleus_monuseg[_gpu].json``: one record per method and seed, and a
``supervised_vs_monai_hovernet`` ratio record per seed (pathseg / MONAI AJI and PQ).

Usage::

    python benchmarks/nucleus_monuseg.py                       # CPU defaults: 12 min per method
    python benchmarks/nucleus_monuseg.py --quick --out /tmp/nuc_quick.json --work /tmp/nuc_quick
"""

from __future__ import annotations

import argparse
import hashlib
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
from _results import run_paths, write_results
from pathseg.config import resolve_config
from pathseg.data.instances import discover_instance_dataset, load_instances
from pathseg.data.io import read_image
from pathseg.data.transforms import AugmentConfig, build_train_transform, to_tensor
from pathseg.engine import fit
from pathseg.inference.sliding_window import predict_logits
from pathseg.methods.nuclei import NucleiConfig, train
from pathseg.methods.nuclei.data import IGNORE, NucleusDataset
from pathseg.methods.nuclei.train import split_samples
from pathseg.metrics import NucleusEvaluator

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("PATHSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "monuseg"
METHODS = ("supervised", "monai_hovernet", "scratch", "nucleus_ssl", "genselfdiff")
# The pretraining records: the same segmenter recipe as `supervised`, started from random weights
# (scratch), from `pathseg nuclei pretrain` (--ssl-run: G_BA) or from `pathseg pretrain`
# (--diffusion-run: the denoiser's U-Net with a new head, as GenSelfDiff fine-tunes).
INITIALISED = {"nucleus_ssl": "ssl_run", "genselfdiff": "diffusion_run"}
REPORTED = ("aji", "pq", "dq", "sq", "dice", "pooled_aji", "pooled_pq")
HOVERNET_TILE = 256  # HoVerNet "fast" accepts exactly 256 x 256 inputs


@dataclass
class Settings:
    """Sizes of one benchmark scale (defaults, or ``--quick`` for a smoke run)."""

    crop: int  # pathseg's crop and window (HoVerNet always uses 256)
    batch: int
    budget_min: float
    test_images: int | None
    pathseg_model: list[str]  # config overrides of model.*


FULL = Settings(crop=256, batch=8, budget_min=12.0, test_images=None, pathseg_model=[])
QUICK = Settings(
    crop=64,
    batch=2,
    budget_min=0.1,
    test_images=2,
    pathseg_model=[
        "model.name=unet",
        "model.base_channels=8",
        "model.channel_mults=[1,2]",
        "model.num_res_blocks=1",
    ],
)


# ---------------------------------------------------------------------------- configuration


def nuclei_config(
    args, seed: int, run_dir: Path, crop: int, test: Path | None = None, init: Path | None = None
) -> NucleiConfig:
    """The pathseg nucleus config every method shares (data split, crops, engine settings)."""
    overrides = [
        f"data.train={args.data / 'train'}",
        f"data.test={test or args.data / 'test'}",
        "data.val_fraction=0",
        f"data.label_fraction={args.label_fraction}",
        f"data.crop_size={crop}",
        "train.steps=10000000",  # the budget ends the run
        f"train.budget_minutes={args.budget_min}",
        f"train.batch_size={args.settings.batch}",
        "train.checkpoint_every=10000000",
        f"train.seed={seed}",
        f"output={run_dir}",
        *args.settings.pathseg_model,
    ]
    if args.threads:
        overrides.append(f"train.threads={args.threads}")
    if init is not None:
        overrides.append(f"init={init}")
    return resolve_config(NucleiConfig, None, overrides)


def test_samples(args) -> list:
    samples = discover_instance_dataset(args.data / "test")
    limit = args.test_images if args.test_images is not None else args.settings.test_images
    return samples[:limit] if limit else samples


# ---------------------------------------------------------------------------- pathseg


def run_supervised(args, seed: int, work: Path, method: str = "supervised") -> tuple[dict, dict]:
    """pathseg's nucleus segmenter; its own ``train`` scores ``data.test`` (limited by a folder
    of links when ``--test-images`` is set). Pretraining records start from their run's weights."""
    run_dir = work / f"{method}_{seed}_{args.label_fraction:g}"
    init = getattr(args, INITIALISED[method]) if method in INITIALISED else None
    shutil.rmtree(run_dir, ignore_errors=True)
    tests = test_samples(args)
    subset = len(tests) < len(discover_instance_dataset(args.data / "test"))
    test = link_test(tests, work) if subset else None
    config = nuclei_config(args, seed, run_dir, args.settings.crop, test, init)
    started = time.perf_counter()
    outcome = train(config, show_progress=False)
    eval_s = time.perf_counter() - started - outcome["train_seconds"]
    summary = outcome["test"]
    return {k: summary[k] for k in REPORTED}, {**outcome, "eval_s": eval_s, "tests": tests}


def link_test(samples: list, work: Path) -> Path:
    """A test folder (``images/``, ``annotations/``) of symbolic links to ``samples`` only."""
    folder = work / "test_subset"
    shutil.rmtree(folder, ignore_errors=True)
    for sample in samples:
        for source in (sample.image, sample.instances):
            target = folder / source.parent.name / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())
    return folder


# ---------------------------------------------------------------------------- MONAI


class HoVerNetTiles(nn.Module):
    """HoVerNet with a tensor output: ``(B, 4, H, W)`` = NP logits (2) + h/v maps (2), as the
    sliding-window predictor needs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return torch.cat([out["nucleus_prediction"], out["horizontal_vertical"]], dim=1)


def run_monai(args, seed: int, work: Path) -> tuple[dict, dict]:
    from monai.apps.pathology.losses import HoVerNetLoss
    from monai.apps.pathology.transforms import HoVerNetInstanceMapPostProcessing
    from monai.networks.nets import HoVerNet

    run_dir = work / f"monai_hovernet_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = nuclei_config(args, seed, run_dir, HOVERNET_TILE)
    train_set, _, _ = split_samples(config)  # the supervised run's training images
    augment = AugmentConfig(crop_size=HOVERNET_TILE, **config.data.augment.model_dump())
    dataset = NucleusDataset(train_set, build_train_transform(augment, ignore_index=-1), seed=seed)
    torch.manual_seed(seed)
    model = HoVerNet(mode="fast", in_channels=3, np_out_channels=2, out_classes=0, decoder_padding=True)
    criterion = HoVerNetLoss()

    def loss_fn(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        mask = batch["mask"]
        # 1000 px images, 256 px crops and no zoom out: the crops never reach padding.
        assert not (mask == IGNORE).any(), "padding in a training crop"
        out = net(batch["image"])
        prediction = {key: value.float() for key, value in out.items()}
        target = {
            "nucleus_prediction": F.one_hot(mask, 2).permute(0, 3, 1, 2).float(),
            "horizontal_vertical": batch["hv"].float(),
        }
        return criterion(prediction, target), {}

    result = fit(model, dataset, loss_fn, run_dir, replace(config.train), show_progress=False)
    if args.eval_threads:  # test prediction is not part of the budget: it may use more cores
        torch.set_num_threads(args.eval_threads)
    post = HoVerNetInstanceMapPostProcessing()  # MONAI's defaults
    tiles = HoVerNetTiles(result.model).eval()
    evaluator = NucleusEvaluator()
    tests = test_samples(args)
    started = time.perf_counter()
    with torch.inference_mode():
        for sample in tests:
            image = read_image(sample.image)
            truth = load_instances(sample, shape=image.shape[:2], quiet=True)
            window = config.window
            output = predict_logits(
                tiles, to_tensor(image), HOVERNET_TILE, window.overlap, "gaussian", window.sw_batch_size
            )
            output = output.float().cpu().numpy()
            _, instances = post(output[:2], output[2:])
            instances = np.asarray(instances).reshape(image.shape[:2]).astype(np.int32)
            evaluator.update(instances, truth, sample.stem)
    eval_s = time.perf_counter() - started
    summary = evaluator.summary()
    outcome = {"final_step": result.final_step, "train_seconds": result.train_seconds, "eval_s": eval_s}
    return {k: summary[k] for k in REPORTED}, {**outcome, "tests": tests}


# ---------------------------------------------------------------------------- records


def record(method: str, seed: int, metrics: dict, outcome: dict, args, **extra) -> dict:
    steps, seconds = outcome["final_step"], outcome["train_seconds"]
    return {
        "method": method,
        "dataset": "monuseg",
        "split": "test",
        "label_fraction": args.label_fraction,
        "seed": seed,
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "train_steps": steps,
        "wall_s": round(seconds, 1),
        "eval_wall_s": round(outcome["eval_s"], 1),
        "images_per_s": round(steps * args.settings.batch / seconds, 2) if seconds else None,
        "budget_min": args.budget_min,
        "batch": args.settings.batch,
        "threads": torch.get_num_threads(),
        "test_images": [s.stem for s in outcome["tests"]],
        **extra,
    }


def pretraining_info(args, method: str) -> dict:
    """Where a pretrained record's weights came from, and that pretraining's throughput."""
    if method not in INITIALISED:
        return {}
    run = Path(getattr(args, INITIALISED[method]))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    train_rows = [r for r in rows if "images_per_s" in r]
    config = (run / "config.yaml").read_text()
    return {
        "init": str(run),
        "pretrain_steps": max((r["step"] for r in train_rows), default=0),
        "pretrain_minutes": round(max((r.get("train_seconds", 0) for r in train_rows), default=0) / 60, 2),
        "pretrain_images_per_s": round(float(np.median([r["images_per_s"] for r in train_rows])), 2)
        if train_rows
        else None,
        "pretrain_config_sha": hashlib.sha1(config.encode()).hexdigest()[:12],
    }


def gain_records(records: list[dict]) -> list[dict]:
    """Per seed and label fraction: pretrained minus scratch AJI / PQ (points x 100)."""
    by = {(r["method"], r["seed"], r["label_fraction"]): r for r in records}
    out = []
    for (method, seed, fraction), ours in by.items():
        base = by.get(("scratch", seed, fraction))
        if method not in INITIALISED or base is None:
            continue
        out.append(
            {
                "method": f"{method}_minus_scratch",
                "dataset": "monuseg",
                "split": "test",
                "label_fraction": fraction,
                "seed": seed,
                "metrics": {
                    f"{k}_gain_points": round(100 * (ours["metrics"][k] - base["metrics"][k]), 2)
                    for k in ("aji", "pq", "dice")
                },
            }
        )
    return out


def ratio_records(records: list[dict]) -> list[dict]:
    """pathseg / MONAI HoVerNet AJI and PQ per seed where both ran."""
    by = {(r["method"], r["seed"]): r for r in records}
    out = []
    for (method, seed), ours in by.items():
        theirs = by.get(("monai_hovernet", seed))
        if method != "supervised" or theirs is None:
            continue
        mine, base = ours["metrics"], theirs["metrics"]
        ratios = {f"{k}_ratio": round(mine[k] / base[k], 3) if base[k] else None for k in ("aji", "pq")}
        out.append(
            {
                "method": "supervised_vs_monai_hovernet",
                "dataset": "monuseg",
                "split": "test",
                "label_fraction": ours["label_fraction"],
                "seed": seed,
                "budget_min": ours["budget_min"],
                "metrics": ratios,
            }
        )
    return out


def notes(args, reduced: bool) -> str:
    text = (
        f"Both methods: same training images (label fraction {args.label_fraction}, no validation "
        "split), same NucleusDataset crops and augmentations, same fit settings (AdamW lr 1e-3, wd "
        f"1e-4, warm-up 50, cosine, batch {args.settings.batch}, bf16 autocast, EMA 0.999, final EMA "
        f"weights), {args.budget_min:g} min of optimizer steps each. pathseg: {args.settings.crop} px "
        "crops and windows, hover_instances. MONAI: HoVerNet mode='fast', decoder_padding=True "
        "(256 px in and out), no pretrained weights, HoVerNetLoss defaults, 256 px crops and windows "
        "(Gaussian blend, overlap 0.25), HoVerNetInstanceMapPostProcessing defaults. Evaluation: "
        "NucleusEvaluator (IoU 0.5) against the test polygons; eval time not in the budget."
    )
    if args.quick:
        text += (
            " QUICK smoke run: tiny pathseg U-Net at 64 px, batch 2, 0.1 min, 2 test images; "
            "HoVerNet cannot shrink (fixed ResNet-50 widths, 256 px input): scores are meaningless."
        )
    if reduced:
        text += (
            " Reduced for a 2-core CPU: one thread per run, short budget, far from converged; "
            "a HoVerNet step costs ~90x a pathseg step on one thread (~90 s vs ~1 s at batch 8)."
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget-min", type=float, default=None, help="minutes per method (default 12)")
    parser.add_argument("--label-fraction", type=float, default=1.0)
    parser.add_argument("--test-images", type=int, default=None, help="first N test images (default all 14)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--eval-threads", type=int, default=None, help="threads for HoVerNet's test prediction (not budgeted)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--ssl-run", type=Path, default=None, help="`pathseg nuclei pretrain` run folder")
    parser.add_argument("--diffusion-run", type=Path, default=None, help="`pathseg pretrain` run folder")
    args = parser.parse_args()
    for method, option in INITIALISED.items():
        if method in args.methods and getattr(args, option) is None:
            parser.error(f"{method} needs --{option.replace('_', '-')}")
    args.settings = QUICK if args.quick else FULL
    if args.budget_min is None:
        args.budget_min = args.settings.budget_min
    if args.threads:
        torch.set_num_threads(args.threads)
    name, out, work = run_paths("nucleus_monuseg", args.out, args.work)
    reduced = not torch.cuda.is_available()
    records: list[dict] = []
    for seed in args.seeds:
        for method in args.methods:
            print(f"== {method} seed {seed}: {args.budget_min:g} min", flush=True)
            if method == "monai_hovernet":
                metrics, outcome = run_monai(args, seed, work)
                extra = {}
            else:
                metrics, outcome = run_supervised(args, seed, work, method)
                extra = pretraining_info(args, method)
            records.append(record(method, seed, metrics, outcome, args, **extra))
            print(
                f"   {method}: {outcome['final_step']} steps, "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                flush=True,
            )
            write_results(
                out,
                name,
                reduced,
                notes(args, reduced),
                records + ratio_records(records) + gain_records(records),
            )
    records += ratio_records(records) + gain_records(records)
    write_results(out, name, reduced, notes(args, reduced), records)
    print(json.dumps(records, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
