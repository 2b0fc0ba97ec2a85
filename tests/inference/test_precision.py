import pytest
import torch

from pathseg.errors import ConfigError
from pathseg.inference.precision import inference_autocast, native_bf16


def _matmul_dtype(precision: str) -> torch.dtype:
    a = torch.ones(4, 4)
    with inference_autocast(torch.device("cpu"), precision):
        return (a @ a).dtype


def test_bf16_runs_the_network_in_bf16_and_fp32_leaves_it_alone() -> None:
    assert _matmul_dtype("bf16") == torch.bfloat16
    assert _matmul_dtype("fp32") == torch.float32


def test_auto_follows_the_hardware() -> None:
    expected = torch.bfloat16 if native_bf16(torch.device("cpu")) else torch.float32
    assert _matmul_dtype("auto") == expected
    assert native_bf16(torch.device("cuda"))  # every CUDA device runs bf16 autocast


def test_an_unknown_precision_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="'fp16'"):
        inference_autocast(torch.device("cpu"), "fp16")
