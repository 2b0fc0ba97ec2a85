"""Shared fixtures: small synthetic datasets written once per session, the path of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PATHSEG_SHARED_DATA", REPO.parent / "shared" / "data"))

# Two CPU cores and several test processes: one thread each avoids oversubscription stalls.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """12 synthetic 64 px tiles split by pseudo-patient into train/ (8) and test/ (4)."""
    import shutil

    from pathseg.data.synthetic import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("synth")
    full = write_dataset(root / "all", 12, seed=0, config=SynthConfig(size=64))
    for split, names in (("train", range(0, 8)), ("test", range(8, 12))):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
            for i in names:
                shutil.copy(full / sub / f"synth_{i:05d}.png", root / split / sub / f"synth_{i:05d}.png")
    return root


def shared_data_or_skip(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path
