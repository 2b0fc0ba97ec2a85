"""MLPS on WSSS4LUAD: how close do patch labels get to pixel labels?

1. Training images: all 31 ``val`` images and the first 17 ``test`` images (sorted by name). The
   other 17 ``test`` images are never seen in training and are the evaluation set (they hold the
   only ``test`` image with normal tissue, 68).
2. Patch-label data: the training images are cut into patches labelled by the classes covering
   more than 5 % of their annotated pixels (``make_patch_label_set``); background (mask value 3)
   is ignored, as in WSSS4LUAD's own patch labels ``[tumour, stroma, normal]``.
3. Weak pipeline (``pathseg weak run``): PDA classifier -> Grad-CAM of three layers -> pseudo masks
   -> DeepLabV3+ with multi-layer pseudo-supervision; tested with and without the gate.
4. Fully supervised reference: the same DeepLabV3+, steps and batch, trained on the *pixel masks*
   of the same training images with the same CE loss.
5. Everything is scored on the held-out images as whole images, pixels pooled over the set
   (seeds-spec 3.7: background pixels left out): mIoU, FwIoU, per-class IoU, pixel accuracy. The
   CAM pseudo masks are scored twice: on the training patches (with their true patch labels, the
   quality the segmenter learns from) and on the held-out images (labels predicted by the
   classifier at 0.25, as MLPS evaluates CAMs).

Writes ``benchmarks/results/mlps_wsss4luad[_gpu].json`` and ``..._cams.png`` (CAMs of each layer
and the pseudo masks for a few patches).

Usage::

    python benchmarks/mlps_wsss4luad.py --scale cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import run_paths, write_results
from pathseg.config import SupervisedConfig, resolve_config
from pathseg.data.classes import ClassMap
from pathseg.data.folders import discover_dataset
from pathseg.data.patch_labels import make_patch_label_set
from pathseg.methods import supervised, weak

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "wsss4luad"
CLASSES = ["tumour", "stroma", "normal"]
BACKGROUND = 3
HELD_OUT_FROM = 17  # test images [17:] (sorted) are the evaluation set

SCALES = {
    "cpu": {
        "patch": 96,
        "stride": 48,
        "classifier": {"name": "cam_resnet18"},
        "segmenter": {"name": "deeplabv3plus_resnet18"},
        "classifier_steps": 800,
        "segmenter_steps": 800,
        "batch": 16,
    },
    "full": {
        "patch": 224,
        "stride": 112,
        "classifier": {"name": "cam_resnet50"},
        "segmenter": {"name": "deeplabv3plus_resnet50"},
        "classifier_steps": 4000,
        "segmenter_steps": 4000,
        "batch": 16,
    },
}


def link_split(samples, out: Path) -> Path:
    """An images/ + masks/ folder of symlinks (no copy of the data leaves ../shared)."""
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for sample in samples:
        os.symlink(sample.image.resolve(), out / "images" / sample.image.name)
        os.symlink(sample.mask.resolve(), out / "masks" / sample.mask.name)
    return out


def prepare(data: Path, work: Path, settings: dict) -> tuple[Path, Path, Path, dict]:
    val = discover_dataset(data / "val")
    test = discover_dataset(data / "test")
    train_samples = [*val, *test[:HELD_OUT_FROM]]
    held_out = test[HELD_OUT_FROM:]
    train_dir = work / "train_pixels"
    eval_dir = work / "held_out"
    for folder in (train_dir, eval_dir):
        shutil.rmtree(folder, ignore_errors=True)
    (train_dir / "images").mkdir(parents=True)
    (train_dir / "masks").mkdir(parents=True)
    for split, samples in (("val", val), ("test", test[:HELD_OUT_FROM])):  # val/00 and test/00 would collide
        for sample in samples:
            os.symlink(sample.image.resolve(), train_dir / "images" / f"{split}_{sample.image.name}")
            os.symlink(sample.mask.resolve(), train_dir / "masks" / f"{split}_{sample.mask.name}")
    link_split(held_out, eval_dir)
    class_map = ClassMap.from_config({name: i for i, name in enumerate(CLASSES)}, ignore_values=[BACKGROUND])
    patches = work / "patches"
    shutil.rmtree(patches, ignore_errors=True)
    counts = make_patch_label_set(
        discover_dataset(train_dir), class_map, patches, settings["patch"], settings["stride"], 0.05, 0.3
    )
    counts["train_images"] = len(train_samples)
    counts["held_out_images"] = [s.stem for s in held_out]
    print(
        f"== {counts['patches']} patches from {len(train_samples)} images; "
        f"per class {counts['patches_per_class']}"
    )
    return train_dir, eval_dir, patches, counts


def run_weak(settings: dict, patches: Path, eval_dir: Path, work: Path, seed: int) -> tuple[dict, float]:
    run_dir = work / "mlps"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"data.patches={patches}",
        f"data.classes={json.dumps(CLASSES)}",
        f"data.test={eval_dir}",
        f"data.ignore_values=[{BACKGROUND}]",
        "data.white_background=true",
        "data.val_fraction=0",  # as the supervised arm: no model selection, the last step counts
        f"classifier.model={json.dumps(settings['classifier'])}",
        f"classifier.train.steps={settings['classifier_steps']}",
        f"classifier.train.batch_size={settings['batch']}",
        f"classifier.train.seed={seed}",
        f"segmenter.model={json.dumps(settings['segmenter'])}",
        f"segmenter.train.steps={settings['segmenter_steps']}",
        f"segmenter.train.batch_size={settings['batch']}",
        f"segmenter.train.seed={seed}",
        f"output={run_dir}",
    ]
    config = resolve_config(weak.WeakConfig, None, overrides)
    started = time.perf_counter()
    outcome = weak.run_all(config, show_progress=False)
    return {**outcome, "run_dir": run_dir}, time.perf_counter() - started


def run_full(settings: dict, train_dir: Path, eval_dir: Path, work: Path, seed: int) -> tuple[dict, float]:
    run_dir = work / "supervised"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"data.train={train_dir}",
        f"data.test={eval_dir}",
        f"data.classes={json.dumps({name: i for i, name in enumerate(CLASSES)})}",
        f"data.ignore_values=[{BACKGROUND}]",
        "data.val_fraction=0",
        f"data.crop_size={settings['patch']}",
        "data.augment={flips: true, rotate90: true}",
        f"model={json.dumps(settings['segmenter'])}",
        'loss.terms={"ce": 1.0}',
        f"train.steps={settings['segmenter_steps']}",
        f"train.batch_size={settings['batch']}",
        f"train.checkpoint_every={settings['segmenter_steps']}",
        f"train.seed={seed}",
        "eval.object_metrics=false",
        "eval.max_overlays=8",
        f"output={run_dir}",
    ]
    config = resolve_config(SupervisedConfig, None, overrides)
    started = time.perf_counter()
    outcome = supervised.train(config, show_progress=False)
    return weak.pooled_pixel_scores(outcome["test"], CLASSES), time.perf_counter() - started


def record(method: str, split: str, metrics: dict, steps: int | None, wall: float | None, seed: int, **extra):
    return {
        "method": method,
        "dataset": "wsss4luad",
        "split": split,
        "label_fraction": None if method.startswith("mlps") else 1.0,
        "seed": seed,
        "metrics": metrics,
        "train_steps": steps,
        "wall_s": None if wall is None else round(wall, 1),
        "images_per_s": None,
        **extra,
    }


def write(out: Path, args, records: list[dict], settings: dict, counts: dict) -> None:
    notes = (
        (
            f"Training images: WSSS4LUAD val (31) + test[:{HELD_OUT_FROM}] (sorted); evaluation: the other "
            f"{len(counts['held_out_images'])} test images ({', '.join(counts['held_out_images'])}), never "
            f"trained on. Patch labels from the masks: {settings['patch']} px patches at stride "
            f"{settings['stride']}, a class counts if it covers > 5 % of the annotated pixels; "
            f"{counts['patches']} patches ({counts['patches_per_class']}). Weak: {settings['classifier']} "
            f"(output stride 8, PDA from epoch 3) {settings['classifier_steps']} steps, Grad-CAM of "
            "encoder.layer4/layer3/layer2 -> pseudo masks (joint min-max, absent classes excluded, white "
            "background ignored), DeepLabV3+ with MLPS loss 0.6/0.2/0.2, gate at 0.1 (-inf masking). "
            f"Fully supervised: same network ({settings['segmenter']}), "
            f"steps ({settings['segmenter_steps']}), batch ({settings['batch']}), CE loss, "
            f"{settings['patch']} px crops of the same images with pixel masks. "
            "Metrics pooled over the evaluation images, background (mask value 3) left out. "
            "AdamW 1e-3, cosine, bf16 autocast, random init (no ImageNet weights exist offline)."
            + (" Reduced for a 2-core CPU." if args.scale == "cpu" else "")
        ),
    )
    write_results(out, "mlps_wsss4luad", args.scale == "cpu", notes, records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=tuple(SCALES), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    settings = SCALES[args.scale]
    if args.threads:
        torch.set_num_threads(args.threads)
    name, out, work = run_paths("mlps_wsss4luad", args.out, args.work)

    train_dir, eval_dir, patches, counts = prepare(args.data, work, settings)
    records = []
    outcome, wall = run_weak(settings, patches, eval_dir, work, args.seed)
    segmenter = outcome["segmenter"]
    steps = settings["segmenter_steps"]
    records.append(record("mlps", "held-out test", segmenter["test"], steps, wall, args.seed, gate="mask"))
    records.append(record("mlps_ungated", "held-out test", segmenter["test_ungated"], steps, None, args.seed))
    for layer, scores in segmenter["test_cams"].items():
        records.append(
            record(
                "mlps_cam",
                "held-out test",
                scores,
                settings["classifier_steps"],
                None,
                args.seed,
                layer=layer,
            )
        )
    for layer, scores in outcome["pseudo_masks"].get("quality", {}).items():
        records.append(
            record(
                "mlps_pseudo_mask",
                "train patches",
                scores,
                settings["classifier_steps"],
                None,
                args.seed,
                layer=layer,
            )
        )
    shutil.copy(outcome["run_dir"] / "figures" / "cams.png", out.with_name(f"{name}_cams.png"))
    write(out, args, records, settings, counts)
    print(f"== weak (gated): {json.dumps(segmenter['test'])}", flush=True)

    full, wall = run_full(settings, train_dir, eval_dir, work, args.seed)
    records.append(record("supervised", "held-out test", full, steps, wall, args.seed))
    write(out, args, records, settings, counts)
    gap = full["miou"] - segmenter["test"]["miou"]
    print(f"== fully supervised: {json.dumps(full)}")
    print(f"mIoU gap (full - weak): {100 * gap:+.1f} points; wrote {out}")


if __name__ == "__main__":
    main()
