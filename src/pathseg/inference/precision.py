"""The number format networks run in at inference: bf16 autocast where the hardware has it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from pathseg.errors import ConfigError

__all__ = ["PRECISIONS", "inference_autocast", "native_bf16"]

PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively here: any CUDA device, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def inference_autocast(device: torch.device, precision: str = "auto") -> AbstractContextManager:
    """bf16 autocast for ``"bf16"``, and for ``"auto"`` where :func:`native_bf16` (there it runs a
    network about 2x faster; pathseg trains under bf16 autocast too); plain fp32 otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
