"""GenSelfDiff on GlaS: does diffusion pretraining on unlabeled tiles help segmentation with few labels?

1. Pretrain a time-conditioned U-Net as a denoiser on GlaS ``train`` images *without* their masks
   (``pathseg pretrain``), 10 % of the images held out for the validation denoising loss.
2. Fine-tune it (``pathseg train --init``: head replaced, ``t = 0``, all weights trained) with 10 %,
   25 % and 100 % of the ``train`` labels (whole patients from ``grade.csv``), and train the *same*
   network from random initialisation with the same steps, 3 seeds each.
3. Evaluate every run on ``testA`` whole images at the working resolution (Dice, IoU, object F1,
   object Dice, HD95) and plot Dice against label fraction.
4. Speed: pretraining images/s of pathseg's loop against the plain fp32 eager loop of
   ``benchmarks/fp32_reference.py`` (same network and batch, same process).

Writes ``benchmarks/results/genselfdiff_glas[_gpu].json``, ``..._curve.png`` (learning curves) and
``..._samples.png`` (samples from the pretrained denoiser next to real crops).

Scales:
* ``cpu`` (2-core CPU, ~65 min): images at 1/3 resolution, 96 px crops, ``unet_small`` (1.9 M
  parameters, attention at the 12 px level and the bottleneck), 4000 pretraining steps, 300
  fine-tuning steps, bf16 autocast.
* ``full`` (GPU): half resolution, 256 px crops, the ``unet`` preset, 20k pretraining steps,
  1500 fine-tuning steps, bf16 + channels_last + torch.compile.

Usage::

    python benchmarks/genselfdiff_glas.py --scale cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import run_paths, write_results
from fp32_reference import images_per_second
from pathseg.config import SupervisedConfig, resolve_config
from pathseg.data.io import read_image, write_image
from pathseg.engine import TrainerConfig, fit
from pathseg.methods import genselfdiff, supervised
from pathseg.report.figures import image_grid

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glas"
REPORTED = ("dice", "iou", "object_f1", "object_dice", "hd95")

SCALES = {
    "cpu": {
        "image_scale": 1 / 3,
        "crop": 96,
        "model": {"name": "unet_small", "attention_levels": [3], "mid_attention": True},
        "pretrain_steps": 4000,
        "finetune_steps": 300,
        "batch": 8,
        "fast_gpu": False,
    },
    "full": {
        "image_scale": 0.5,
        "crop": 256,
        "model": {"name": "unet", "attention_levels": [3], "mid_attention": True},
        "pretrain_steps": 20000,
        "finetune_steps": 1500,
        "batch": 8,
        "fast_gpu": True,
    },
}


def pretrain_config(settings: dict, data: Path, run_dir: Path, steps: int, seed: int, weighting: str):
    overrides = [
        f"diffusion.weighting={weighting}",
        f"data.images={json.dumps([str(data / 'train')])}",
        f"data.scale={settings['image_scale']}",
        f"data.crop_size={settings['crop']}",
        f"model={json.dumps(settings['model'])}",
        f"train.steps={steps}",
        f"train.batch_size={settings['batch']}",
        f"train.eval_every={max(steps // 4, 1)}",
        f"train.checkpoint_every={max(steps // 4, 1)}",
        f"train.seed={seed}",
        f"train.channels_last={settings['fast_gpu']}",
        f"train.compile={settings['fast_gpu']}",
        f"output={run_dir}",
    ]
    return resolve_config(genselfdiff.PretrainConfig, None, overrides)


def pretrain_run(
    settings: dict, data: Path, work: Path, steps: int, seed: int, weighting: str
) -> tuple[Path, dict]:
    run_dir = work / "pretrain"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = pretrain_config(settings, data, run_dir, steps, seed, weighting)
    print(f"== pretraining {config.model.name} for {steps} steps on unlabeled GlaS train", flush=True)
    started = time.perf_counter()
    outcome = genselfdiff.pretrain(config)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if r["split"] == "train"]
    rates = rates[1:] or rates  # the first window holds start-up
    val = [r["val_loss"] for r in records if r["split"] == "val"]
    record = {
        "method": "genselfdiff_pretrain",
        "dataset": "glas",
        "split": "train (unlabeled)",
        "label_fraction": None,
        "seed": seed,
        "metrics": {"val_loss_first": val[0], "val_loss_best": min(val), "val_loss_last": val[-1]},
        "loss_weighting": weighting,
        "train_steps": steps,
        "wall_s": round(wall, 1),
        "images_per_s": round(statistics.mean(rates), 2),
        "best": outcome.get("best"),
    }
    return run_dir, record


def speed_ratio(settings: dict, data: Path, work: Path, steps: int = 25) -> list[dict]:
    """pathseg's pretraining loop vs the fp32 eager reference, same network, batch and crops.

    Runs first, before anything else competes for the CPU.
    """
    config = pretrain_config(settings, data, work / "speed_config", steps, 0, "uniform")
    paths = genselfdiff.pretrain_images(config)
    from pathseg.data.datasets import UnlabeledImageDataset
    from pathseg.data.transforms import AugmentConfig, build_train_transform
    from pathseg.diffusion import DiffusionLoss

    transform = build_train_transform(AugmentConfig(crop_size=settings["crop"]))
    dataset = UnlabeledImageDataset(paths, transform, settings["image_scale"])
    dataset.preload()
    objective = DiffusionLoss(config.diffusion)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    run_dir = work / "speed_pathseg"
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = TrainerConfig(
        steps=steps,
        batch_size=settings["batch"],
        log_every=5,
        checkpoint_every=10**6,
        ema_decay=0.999,
        warmup_steps=0,
        channels_last=settings["fast_gpu"],
        compile=settings["fast_gpu"],
    )
    fit(
        genselfdiff.build_denoiser(config),
        dataset,
        lambda net, batch: objective(net, batch["image"]),
        run_dir,
        trainer,
        show_progress=False,
    )
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ours = statistics.mean(r["images_per_s"] for r in logged[1:])  # the first window holds warm-up
    batches = [
        torch.stack(
            [dataset[(i * settings["batch"] + j) % len(dataset)]["image"] for j in range(settings["batch"])]
        )
        for i in range(steps)
    ]
    reference = images_per_second(genselfdiff.build_denoiser(config).to(device), batches, warmup=5)
    print(f"== speed: pathseg {ours:.2f} img/s, fp32 eager reference {reference:.2f} img/s", flush=True)
    base = {
        "dataset": "glas",
        "split": "train (unlabeled)",
        "label_fraction": None,
        "seed": 0,
        "train_steps": steps,
    }
    return [
        {
            **base,
            "method": "genselfdiff_pretrain",
            "metrics": {"speedup_vs_fp32_reference": ours / reference},
            "wall_s": None,
            "images_per_s": round(ours, 2),
        },
        {
            **base,
            "method": "fp32_reference",
            "metrics": {},
            "wall_s": None,
            "images_per_s": round(reference, 2),
        },
    ]


def finetune_run(
    settings: dict, data: Path, work: Path, fraction: float, seed: int, init: Path | None, steps: int
) -> dict:
    method = "genselfdiff" if init is not None else "scratch"
    run_dir = work / f"{method}_{fraction}_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"data.train={data / 'train'}",
        f"data.test={data / 'testA'}",
        f"data.groups_csv={data / 'grade.csv'}",
        'data.classes={"background": 0, "gland": 255}',
        f"data.label_fraction={fraction}",
        "data.val_fraction=0",
        f"data.scale={settings['image_scale']}",
        f"data.crop_size={settings['crop']}",
        "data.augment={flips: true, rotate90: true, scale_range: [0.8, 1.25]}",
        f"train.steps={steps}",
        f"train.batch_size={settings['batch']}",
        "train.lr=1e-3",
        f"train.warmup_steps={steps // 10}",
        "train.ema_decay=0.99",
        f"train.checkpoint_every={steps}",
        f"train.seed={seed}",
        f"train.channels_last={settings['fast_gpu']}",
        "eval.max_overlays=4",
        f"output={run_dir}",
    ]
    if init is not None:
        overrides.append(f"init={init}")
    else:  # the very same network as the converted denoiser, randomly initialised
        overrides.append(
            f"model={json.dumps({**settings['model'], 'time_embedding': True, 'fixed_timestep': 0})}"
        )
    config = resolve_config(SupervisedConfig, None, overrides)
    started = time.perf_counter()
    outcome = supervised.train(config, show_progress=False)
    wall = time.perf_counter() - started
    images = len(json.loads((run_dir / "splits.json").read_text())["train_images"])
    metrics = {k: outcome["test"][k] for k in REPORTED}
    print(
        f"   {method:11s} {fraction:>4} seed {seed} ({images} img): "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        flush=True,
    )
    return {
        "method": method,
        "dataset": "glas",
        "split": "testA",
        "label_fraction": fraction,
        "seed": seed,
        "metrics": metrics,
        "train_steps": steps,
        "wall_s": round(wall, 1),
        "images_per_s": None,
        "train_images": images,
    }


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for metric, axis in zip(("dice", "object_f1"), axes, strict=True):
        for method, colour in (("genselfdiff", "#2e7d32"), ("scratch", "#757575")):
            rows = [r for r in records if r["method"] == method]
            fractions = sorted({r["label_fraction"] for r in rows})
            if not fractions:
                continue
            values = [[r["metrics"][metric] for r in rows if r["label_fraction"] == f] for f in fractions]
            means = [statistics.mean(v) for v in values]
            spreads = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            label = "diffusion-pretrained" if method == "genselfdiff" else "random init"
            axis.errorbar(
                [100 * f for f in fractions],
                means,
                yerr=spreads,
                fmt="o-",
                color=colour,
                capsize=3,
                label=label,
            )
        axis.set_xscale("log")
        axis.set_xticks([10, 25, 100], ["10 %", "25 %", "100 %"])
        axis.set_xlabel("labelled GlaS train images")
        axis.set_ylabel(f"testA {metric} (mean ± sd, 3 seeds)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(out: Path, args, records: list[dict], settings: dict) -> None:
    notes = (
        f"Images at {settings['image_scale']:.3g} of native resolution, {settings['crop']} px crops, "
        f"batch {settings['batch']}, model {json.dumps(settings['model'])} with a time embedding. "
        f"Pretraining: {args.pretrain_steps} steps on GlaS train images without masks "
        f"(DDPM, quadratic schedule, epsilon prediction, {args.weighting} loss weights, AdamW 2e-4, "
        "EMA 0.999). "
        f"Fine-tuning: {args.finetune_steps} steps, CE+Dice, AdamW 1e-3, EMA 0.99, flips/rot90/scale"
        "; 'genselfdiff' starts from the pretrained denoiser (head replaced, t fixed at 0), 'scratch' is "
        "the same network from random init with the same steps. Label fractions are whole patients "
        "(grade.csv), seeds 0-2 draw different subsets and inits. Metrics on all 60 testA images, "
        "whole images at the working resolution (HD95 in working-resolution pixels). "
        + ("Reduced for a 2-core CPU (the full scale needs a GPU); " if args.scale == "cpu" else "")
        + "speed ratio: pathseg loop (bf16 autocast, SDPA, EMA"
        + (", channels_last, torch.compile" if settings["fast_gpu"] else "")
        + ") vs benchmarks/fp32_reference.py."
    )
    write_results(out, "genselfdiff_glas", args.scale == "cpu", notes, records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=tuple(SCALES), default="cpu")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--weighting",
        choices=("uniform", "p2", "min_snr"),
        default="uniform",
        help="pretraining loss weights over t. GenSelfDiff uses p2 (k = gamma = 1), which gives t = 0 a "
        "weight of ~1e-4: the denoiser never learns the t = 0 pass that fine-tuning then uses",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    settings = SCALES[args.scale]
    args.pretrain_steps = args.pretrain_steps or settings["pretrain_steps"]
    args.finetune_steps = args.finetune_steps or settings["finetune_steps"]
    if args.threads:
        torch.set_num_threads(args.threads)
    name, out, work = run_paths("genselfdiff_glas", args.out, args.work)

    records = speed_ratio(settings, args.data, work)
    pretrain_dir, record = pretrain_run(
        settings, args.data, work, args.pretrain_steps, seed=0, weighting=args.weighting
    )
    records.append(record)
    samples = image_grid(
        [read_image(pretrain_dir / "real.png"), read_image(pretrain_dir / "samples.png")], 2, 8
    )
    write_image(out.with_name(f"{name}_samples.png"), samples)
    write(out, args, records, settings)
    for fraction in args.fractions:
        for seed in args.seeds:
            for init in (pretrain_dir, None):
                records.append(
                    finetune_run(settings, args.data, work, fraction, seed, init, args.finetune_steps)
                )
                write(out, args, records, settings)
    finetuned = [r for r in records if r["method"] in ("genselfdiff", "scratch")]
    for fraction in args.fractions:
        gains = [
            p["metrics"]["dice"] - s["metrics"]["dice"]
            for p in finetuned
            for s in finetuned
            if p["method"] == "genselfdiff"
            and s["method"] == "scratch"
            and p["label_fraction"] == s["label_fraction"] == fraction
            and p["seed"] == s["seed"]
        ]
        if gains:
            mean_gain = statistics.mean(gains)
            print(f"fraction {fraction}: Dice gain from pretraining {mean_gain:+.4f} (per seed {gains})")
    plot(finetuned, out.with_name(f"{name}_curve.png"))
    write(out, args, records, settings)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
