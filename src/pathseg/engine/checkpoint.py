"""Checkpoints that survive being killed at any instant.

Layout of ``<run>/checkpoints``::

    step_000400/            one complete checkpoint
        model.safetensors   the live weights (``save_weights``: safetensors, config in the metadata)
        ema.safetensors     the EMA weights, when EMA is on
        training_state.pt   optimizer, scheduler, EMA counter, RNG states, step, best metric
    last.json               {"step": 400, "dir": "step_000400"}
    best.json               {"step": 300, "dir": "step_000300", "metric": "dice", "value": 0.91}

A checkpoint folder is written under a temporary name and renamed when complete; the pointer files
are replaced atomically afterwards. A kill at any point therefore leaves the previous pointer
pointing at a complete checkpoint, never at a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from pathseg.errors import PathsegError
from pathseg.models.weights import save_weights


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    _fsync_file(tmp)
    os.replace(tmp, path)


def capture_rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    model: nn.Module,
    training_state: dict[str, Any],
    ema_model: nn.Module | None = None,
    keep: tuple[str, ...] = (),
) -> Path:
    """Write ``step_<step>/`` atomically, point ``last.json`` at it and prune older checkpoints.

    Args:
        keep: names of checkpoint folders that must survive pruning (e.g. the best one).
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = checkpoint_dir / name
    tmp = checkpoint_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors")
    if ema_model is not None:
        save_weights(ema_model, tmp / "ema.safetensors")
    torch.save(training_state, tmp / "training_state.pt")
    for file in tmp.iterdir():
        _fsync_file(file)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(checkpoint_dir / "last.json", json.dumps({"step": step, "dir": name}))
    _prune(checkpoint_dir, {name, *keep})
    return final


def _prune(checkpoint_dir: Path, keep: set[str]) -> None:
    for pointer in ("last.json", "best.json"):
        info = read_pointer(checkpoint_dir, pointer)
        if info:
            keep.add(info["dir"])
    for path in checkpoint_dir.iterdir():
        if not path.is_dir() or path.name in keep:
            continue
        if path.name.startswith("."):  # leftovers of a killed save or prune
            shutil.rmtree(path, ignore_errors=True)
            continue
        # Rename first: a kill during rmtree then leaves hidden debris, never a half-empty step_ folder.
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def read_pointer(checkpoint_dir: Path, name: str = "last.json") -> dict[str, Any] | None:
    path = checkpoint_dir / name
    if not path.exists():
        return None
    return json.loads(path.read_text())


def mark_best(checkpoint_dir: Path, step: int, metric: str, value: float) -> None:
    info = {"step": step, "dir": f"step_{step:07d}", "metric": metric, "value": value}
    atomic_write_text(checkpoint_dir / "best.json", json.dumps(info))


def load_checkpoint(checkpoint_dir: Path, pointer: str = "last.json") -> tuple[Path, dict[str, Any]]:
    """Return the folder of the checkpoint ``pointer`` names and its training state."""
    info = read_pointer(checkpoint_dir, pointer)
    if info is None:
        raise PathsegError(
            f"{checkpoint_dir}: no {pointer}; nothing to resume from (was the run ever checkpointed?)"
        )
    folder = checkpoint_dir / info["dir"]
    state_file = folder / "training_state.pt"
    if not state_file.exists():
        raise PathsegError(f"{folder}: checkpoint is incomplete (training_state.pt missing)")
    # Our own file with numpy/python RNG states inside, so not weights_only; resume only your own runs.
    return folder, torch.load(state_file, map_location="cpu", weights_only=False)


def load_weights_into(model: nn.Module, path: Path) -> None:
    model.load_state_dict(load_file(str(path)))
