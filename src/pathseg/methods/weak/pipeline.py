"""All three stages in order, skipping finished ones."""

from __future__ import annotations

from typing import Any

from pathseg.config import to_plain
from pathseg.engine import write_run_info
from pathseg.engine.distributed import barrier, setup_distributed
from pathseg.methods.weak.classifier import train_classifier
from pathseg.methods.weak.config import WeakConfig, check_config, stage_dirs
from pathseg.methods.weak.pseudo_masks import generate_pseudo_masks
from pathseg.methods.weak.segmenter import train_segmenter


def run_all(config: WeakConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Classifier -> pseudo masks -> segmenter, skipping stages that are finished.

    A stage counts as finished when its output exists (``model.safetensors`` for the training
    stages, every pseudo mask for stage 2); an unfinished training stage continues from its last
    checkpoint when ``resume`` is true.
    """
    check_config(config)
    dirs = stage_dirs(config)
    write_run_info(dirs["root"], to_plain(config))
    outcome: dict[str, Any] = {}
    if not (dirs["classifier"] / "model.safetensors").exists():
        started = (dirs["classifier"] / "checkpoints" / "last.json").exists()
        outcome["classifier"] = train_classifier(
            config, resume=resume and started, show_progress=show_progress
        )
    # Under torchrun one process writes the pseudo masks and the others wait for them (the training
    # stages leave the process group, so it is joined again here).
    dist_info = setup_distributed()
    if dist_info.is_main:
        outcome["pseudo_masks"] = generate_pseudo_masks(config, show_progress)
    barrier(dist_info)
    if not (dirs["segmenter"] / "model.safetensors").exists():
        started = (dirs["segmenter"] / "checkpoints" / "last.json").exists()
        outcome["segmenter"] = train_segmenter(config, resume=resume and started, show_progress=show_progress)
    return outcome
