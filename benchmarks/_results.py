"""The result-file header every benchmark writes (schema: benchmarks/README.md)."""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

from pathseg.engine import environment_info

RESULTS = Path(__file__).resolve().parent / "results"


def run_paths(benchmark: str, out: Path | None, work: Path | None) -> tuple[str, Path, Path]:
    """Result name (``<benchmark>_gpu`` on a GPU, so CPU and GPU files coexist), result file and
    the folder for run outputs (a fresh temporary one unless ``work`` is given)."""
    name = f"{benchmark}_gpu" if torch.cuda.is_available() else benchmark
    work = work or Path(tempfile.mkdtemp(prefix=f"{benchmark}_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"run folders in {work}", flush=True)
    return name, out or RESULTS / f"{name}.json", work


def write_results(out: Path, benchmark: str, reduced: bool, notes: str, records: list[dict]) -> None:
    """Write ``out`` with command, commit, time, machine, scale, ``notes`` and ``records``."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    payload = {
        "benchmark": benchmark,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "git_commit": environment_info()["git_commit"],
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "device": "cuda" if gpu else "cpu",
            "cpu_threads": torch.get_num_threads(),
            "gpu": gpu,
            "torch": torch.__version__,
        },
        "scale": "cpu-reduced" if reduced else "full",
        "notes": notes,
        "records": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
