"""Speed reference for diffusion pretraining: the plain fp32 eager loop a straightforward script would use.

Same network, batch and objective as pathseg's ``pretrain`` (epsilon prediction, MSE), but none of
the speed-ups: fp32 everywhere, attention through the unfused math kernel, no ``torch.compile``, no
channels_last. It also skips what pathseg's loop adds on top (EMA, logging, P2 weights), so the
ratio measures the whole of pathseg against the bare minimum.

Usage (stand-alone, random data)::

    python benchmarks/fp32_reference.py --size 96 --batch 8 --steps 20
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def images_per_second(model: nn.Module, batches: list[Tensor], warmup: int = 2, lr: float = 2e-4) -> float:
    """Train ``model`` as a noise predictor on ``batches`` (in [-1, 1]); images/s after ``warmup`` steps."""
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, 1000, device=device) ** 2
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    model.train()
    seen, started = 0, None
    with sdpa_kernel(SDPBackend.MATH):
        for step, x0 in enumerate(batches):
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started, seen = time.perf_counter(), 0
            x0 = x0.to(device)
            t = torch.randint(0, 1000, (x0.shape[0],), device=device)
            noise = torch.randn_like(x0)
            a = alpha_bar[t].view(-1, 1, 1, 1)
            loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += x0.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    if started is None:
        raise ValueError(f"need more than {warmup} batches")
    return seen / (time.perf_counter() - started)


def main() -> None:
    from pathseg.models import create_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="unet_small")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model(args.model, in_channels=3, num_classes=3, time_embedding=True).to(device)
    batches = [torch.rand(args.batch, 3, args.size, args.size) * 2 - 1 for _ in range(args.steps)]
    print(f"{images_per_second(model, batches):.2f} images/s (fp32 eager, {device})")


if __name__ == "__main__":
    main()
