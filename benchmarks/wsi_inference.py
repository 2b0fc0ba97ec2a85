"""Whole-slide inference: memory against slide size, throughput, and the pipeline a user would write.

Synthetic pyramidal slides (``pathseg.slides.synthetic``: JPEG tiles, tissue blobs on glass, mpp 0.5)
of several sizes are segmented by ``pathseg.slides.predict_slide`` with pathseg's default network
(``resunet_resnet18``, light decoder, random weights: speed and memory do not depend on them), 256 px
tiles at ``--model-mpp`` with 25 % overlap, batch 8. Each run is its own process, so its peak RSS is
its own (DataLoader workers are separate processes and reported beside it).

Compared on one slide with the same network, tile, overlap, batch and Gaussian blending:

* ``monai_wsi``: MONAI's ``WSIReader`` reads the level at the model's resolution, and MONAI's
  ``SlidingWindowInferer`` runs over it, as in MONAI's pathology tutorials (every tile, glass too;
  the whole level and its output in memory);
* ``pathseg`` with tissue detection (what a user gets) and with ``--no-tissue`` (every tile, like
  MONAI), so the speed-up is shown both ways;
* ``tiatoolbox``: TIAToolbox's ``SemanticSegmentor`` was tried (see ``TIATOOLBOX`` below).

Also measured: the network's own forward throughput on random batches (the ceiling the pipeline
can approach).

Usage::

    python benchmarks/wsi_inference.py                         # 2k, 10k, 25k, 50k px; compare at 25k
    python benchmarks/wsi_inference.py --sizes 2000 --compare-size 2000 --work /tmp/wsi   # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import run_paths, write_results
from pathseg.inference.precision import native_bf16

SLIDE_MPP, TILE, OVERLAP, BATCH = 0.5, 256, 0.25, 8
CLASSES = ("background", "tissue_class")
TIATOOLBOX = (
    "not run: no TIAToolbox release installs beside torch==2.13.0. tiatoolbox 2.1.3 (the newest) "
    "requires torch<2.13.0 and torchvision<0.28; pip's resolver then backtracks into old releases "
    "that build scikit-image 0.19 from source; and torchvision, which its models import, has only "
    "CUDA builds here that fail to import (the reason pathseg keeps torchvision out)."
)


def build_model() -> torch.nn.Module:
    from pathseg.models import create_model

    torch.manual_seed(0)
    model = create_model("resunet_resnet18", num_classes=len(CLASSES), decoder_channels=(128, 64, 32, 16, 16))
    return model.eval()


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its (worker) children, MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def run_pathseg(
    slide_path: Path, out: Path, model_mpp: float, workers: int, tissue: bool, precision: str = "auto"
) -> dict:
    from pathseg.slides.predict import SlideModel, SlideSettings, predict_slide
    from pathseg.slides.reader import open_slide
    from pathseg.slides.tissue import TissueSettings

    network = SlideModel(build_model(), CLASSES, [(0, 0, 0), (230, 159, 0)], model_mpp, TILE, OVERLAP)
    settings = SlideSettings(
        BATCH, workers, TissueSettings() if tissue else None, min_tissue=0.01, precision=precision
    )
    with open_slide(slide_path) as slide:
        result = predict_slide(slide, network, out, settings, show_progress=False)
    summary = json.loads((out / f"{slide_path.stem}.json").read_text())
    return {"tiles": result.tiles, "wall_s": result.seconds, "grid_tiles": summary["tiles_in_grid"]}


def run_monai(slide_path: Path, model_mpp: float) -> dict:
    """MONAI's WSI reader + sliding-window inferer over the level at the model's resolution."""
    from monai.data import WSIReader
    from monai.inferers import SlidingWindowInferer

    started = time.perf_counter()
    reader = WSIReader(backend="openslide")
    wsi = reader.read(str(slide_path))
    level = round(np.log2(model_mpp / SLIDE_MPP))  # the synthetic pyramid halves per level
    image, _ = reader.get_data(wsi, level=level, mode="RGB")
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)[None]
    inferer = SlidingWindowInferer(
        roi_size=(TILE, TILE), sw_batch_size=BATCH, overlap=OVERLAP, mode="gaussian", progress=False
    )
    model = build_model()
    with torch.no_grad():
        labels = inferer(tensor, model).argmax(dim=1)
    height, width = labels.shape[-2:]
    stride = TILE - round(TILE * OVERLAP)
    tiles = int(np.ceil((height - TILE) / stride + 1) * np.ceil((width - TILE) / stride + 1))
    return {"tiles": tiles, "wall_s": time.perf_counter() - started, "grid_tiles": tiles}


def forward_throughput(precision: str, seconds: float = 20.0) -> float:
    """Tiles per second of the network alone, on random batches (no reading, blending or writing),
    run as the slide pipeline runs it (``bf16``: autocast + channels_last) or plainly (``fp32``)."""
    from contextlib import nullcontext

    model = build_model()
    batch = torch.randn(BATCH, 3, TILE, TILE)
    autocast = nullcontext()
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", torch.bfloat16)
    with torch.no_grad(), autocast:
        model(batch)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(batch)
            done += BATCH
    return done / (time.perf_counter() - started)


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "forward":
        print(json.dumps({p: forward_throughput(p) for p in ("bf16", "fp32")}))
        return
    slide = Path(args.slide)
    if args.child == "monai":
        result = run_monai(slide, args.model_mpp)
    else:
        out = Path(args.work) / f"out_{args.child}_{slide.stem}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh prediction, never a resumed one
        precision = "fp32" if args.child.endswith("fp32") else "auto"
        result = run_pathseg(slide, out, args.model_mpp, args.workers, args.child == "pathseg", precision)
    own, children = peak_rss_mb()
    print(json.dumps({**result, "peak_rss_mb": own, "workers_peak_rss_mb": children}))


def measure(kind: str, args: argparse.Namespace, slide: Path | None = None) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--work", str(args.work)]
    command += ["--model-mpp", str(args.model_mpp), "--workers", str(args.workers)]
    command += ["--threads", str(args.threads or torch.get_num_threads())]
    if slide is not None:
        command += ["--slide", str(slide)]
    print(f"== {kind} {slide.name if slide else ''}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_slide(work: Path, size: int) -> Path:
    from pathseg.slides.synthetic import write_synthetic_slide

    path = work / f"synthetic_{size}.tif"
    if not path.exists():
        started = time.perf_counter()
        write_synthetic_slide(path, size, mpp=SLIDE_MPP, seed=size)
        print(f"wrote {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def record(method: str, size: int, result: dict, forward: float) -> dict:
    tiles_per_s = result["tiles"] / result["wall_s"]
    return {
        "method": method,
        "dataset": "synthetic_slide",
        "split": None,
        "label_fraction": None,
        "seed": 0,
        "slide_px": size,
        "metrics": {
            "peak_rss_mb": round(result["peak_rss_mb"], 1),
            "workers_peak_rss_mb": round(result["workers_peak_rss_mb"], 1),
            "tiles_per_s": round(tiles_per_s, 2),
            "wall_s": round(result["wall_s"], 2),
            "tiles": result["tiles"],
            "grid_tiles": result["grid_tiles"],
            "share_of_forward_throughput": round(tiles_per_s / forward, 3),
        },
        "train_steps": None,
        "wall_s": round(result["wall_s"], 2),
        "images_per_s": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 25000, 50000])
    parser.add_argument("--compare-size", type=int, default=25000)
    parser.add_argument("--model-mpp", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="slides and outputs (default: temporary)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--slide", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    _, out, args.work = run_paths("wsi_inference", args.out, args.work)
    alone = measure("forward", args)
    bf16 = native_bf16(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    forward = alone["bf16"] if bf16 else alone["fp32"]  # what the pipeline runs ("auto" precision)
    print(f"network alone: {alone['bf16']:.1f} tiles/s bf16, {alone['fp32']:.1f} fp32", flush=True)
    records = []
    for size in args.sizes:
        result = measure("pathseg", args, synthetic_slide(args.work, size))
        records.append(record("pathseg", size, result, forward))
        print(json.dumps(records[-1]["metrics"]), flush=True)
    compare = synthetic_slide(args.work, args.compare_size)
    runs = {
        "pathseg": next((r for r in records if r["slide_px"] == args.compare_size), None),
        "pathseg_no_tissue": record(
            "pathseg_no_tissue", args.compare_size, measure("pathseg_all", args, compare), forward
        ),
        "pathseg_no_tissue_fp32": record(
            "pathseg_no_tissue_fp32",
            args.compare_size,
            measure("pathseg_all_fp32", args, compare),
            alone["fp32"],
        ),
        "monai_wsi": record("monai_wsi", args.compare_size, measure("monai", args, compare), alone["fp32"]),
    }
    if runs["pathseg"] is None:
        runs["pathseg"] = record("pathseg", args.compare_size, measure("pathseg", args, compare), forward)
        records.append(runs["pathseg"])
    records += [runs["pathseg_no_tissue"], runs["pathseg_no_tissue_fp32"], runs["monai_wsi"]]
    monai_wall = runs["monai_wsi"]["wall_s"]
    for name in ("pathseg", "pathseg_no_tissue", "pathseg_no_tissue_fp32"):
        metrics = runs[name]["metrics"]
        metrics["speedup_vs_monai"] = round(monai_wall / runs[name]["wall_s"], 3)
        metrics["tiles_per_s_ratio_vs_monai"] = round(
            metrics["tiles_per_s"] / runs["monai_wsi"]["metrics"]["tiles_per_s"], 3
        )
    smallest = min(records, key=lambda r: r["slide_px"] if r["method"] == "pathseg" else 10**9)
    for r in records:
        if r["method"] == "pathseg":
            r["metrics"]["peak_rss_vs_smallest"] = round(
                r["metrics"]["peak_rss_mb"] / smallest["metrics"]["peak_rss_mb"], 3
            )
    notes = (
        f"Synthetic pyramidal slides (JPEG tiles, mpp {SLIDE_MPP}, tissue blobs on glass); network "
        f"resunet_resnet18 (light decoder, random weights), {TILE} px tiles at {args.model_mpp} um/px, "
        f"overlap {OVERLAP}, batch {BATCH}, {args.workers} DataLoader workers, "
        f"{args.threads or torch.get_num_threads()} torch threads; pathseg runs bf16 autocast + "
        f"channels_last where the device has native bf16 ({'yes' if bf16 else 'no'} here), "
        "pathseg_no_tissue_fp32 and MONAI run fp32. peak_rss_mb is the "
        "predicting process's own peak (ru_maxrss); workers_peak_rss_mb the largest worker's. "
        f"The network alone runs {alone['bf16']:.1f} tiles/s in bf16 and {alone['fp32']:.1f} in fp32 "
        "(share_of_forward_throughput divides by the one the record's pipeline uses). speedup_vs_monai = "
        "MONAI wall time / pathseg wall time on the same slide (MONAI runs every tile of the level; "
        "pathseg skips glass, pathseg_no_tissue does not). TIAToolbox: " + TIATOOLBOX
    )
    write_results(out, "wsi_inference", not torch.cuda.is_available(), notes, records)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
