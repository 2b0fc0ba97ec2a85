"""The training loop every method uses.

One function, :func:`fit`, readable top to bottom: build the optimizer and schedule, restore a
checkpoint when resuming, then for each step draw a batch, compute the loss under bf16 autocast,
step, update the EMA, log, validate and checkpoint. Methods supply the model, the dataset, a loss
function and an evaluation function; the loop knows nothing about segmentation or diffusion.

Distributed runs: launch the same command with ``torchrun --nproc_per_node N``; each rank takes its
slice of every global batch (see :mod:`pathseg.engine.sampling`), gradients are averaged by DDP, and
only rank 0 evaluates and writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from pathseg.engine import checkpoint as ckpt
from pathseg.engine.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup_distributed,
    setup_distributed,
)
from pathseg.engine.ema import EMA
from pathseg.engine.progress import StepProgress
from pathseg.engine.sampling import StepSampler
from pathseg.errors import ConfigError, PathsegError
from pathseg.models.weights import save_weights

LossFunction = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, float]]]
EvaluateFunction = Callable[[nn.Module, int], dict[str, float]]


@dataclass
class TrainerConfig:
    """Knobs of the loop itself (the method decides model, data and loss).

    Args:
        steps: total optimizer steps (a resumed run finishes at the same step); with
            ``budget_minutes`` an upper bound.
        budget_minutes: wall-clock budget for the optimizer steps themselves (data, forward,
            backward, update; evaluation and checkpoint writing are not counted). The LR schedule
            then follows the spent share of the budget instead of the step count, and the run ends
            at the first step that spends it; a resumed run keeps only the remaining budget. This is
            how two recipes are compared at equal cost: each gets the same minutes, not the same steps.
        batch_size: samples per step on each process.
        optimizer: ``"adamw"`` or ``"sgd"`` (with ``momentum``; the DeepLab/WSSS recipes).
        lr, weight_decay, momentum, betas: optimizer settings (``momentum`` is used by SGD only,
            ``betas`` by AdamW; adversarial training uses a lower first beta).
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: ``"cosine"`` decays to ``lr * min_lr_ratio`` at ``steps``; ``"poly"`` multiplies
            ``lr`` by ``(1 - progress) ** 0.9`` (DeepLab); ``"constant"`` keeps ``lr``.
        grad_clip: max global gradient norm (0 disables clipping).
        ema_decay: EMA of the weights used for validation and the final model (0 disables).
        precision: ``"bf16"`` autocast (CPU and GPU) or ``"fp32"``.
        eval_every, checkpoint_every, log_every: in steps; the last step always evaluates and checkpoints.
        num_workers: data-loader worker processes.
        seed: seeds model init (done by the caller), batch order and augmentations.
        monitor, monitor_mode: which validation metric selects the best checkpoint.
        device: ``"auto"`` picks CUDA when available.
        threads: torch CPU threads for this process (None keeps torch's default).
        channels_last: NHWC memory layout for model and 4-D inputs (faster convolutions on recent
            GPUs under bf16; no gain on CPU).
        compile: wrap the training forward in ``torch.compile`` (GPU; the first steps are slow
            while it compiles). Checkpoints and evaluation use the plain module.
    """

    # Read by pydantic when this dataclass is a section of a run config: typos are errors.
    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}

    steps: int = 1000
    budget_minutes: float | None = None
    batch_size: int = 8
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 50
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    precision: Literal["bf16", "fp32"] = "bf16"
    eval_every: int = 250
    checkpoint_every: int = 250
    log_every: int = 10
    num_workers: int = 0
    seed: int = 0
    monitor: str = "dice"
    monitor_mode: Literal["max", "min"] = "max"
    device: str = "auto"
    threads: int | None = None
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ConfigError(
                f"train.steps and train.batch_size must be positive (got {self.steps}, {self.batch_size})"
            )
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ConfigError(f"train.budget_minutes must be positive (got {self.budget_minutes})")
        if self.schedule not in ("cosine", "poly", "constant"):
            raise ConfigError(f"train.schedule must be 'cosine', 'poly' or 'constant', not {self.schedule!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"train.optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"train.precision must be 'bf16' or 'fp32', not {self.precision!r}")


@dataclass
class FitResult:
    run_dir: Path
    final_step: int
    best: dict[str, Any] | None
    model: nn.Module
    """The weights to use for inference: EMA (when on) from the best checkpoint, else the last."""
    train_seconds: float = 0.0
    """Wall time spent in training steps over the whole run (resumes included)."""

    def summary(self) -> dict[str, Any]:
        """The run folder, best validation score, final step and training time, as a method's
        ``train`` returns them (JSON-ready)."""
        return {
            "run_dir": str(self.run_dir),
            "best": self.best,
            "final_step": self.final_step,
            "train_seconds": self.train_seconds,
        }


def resolve_device(name: str, dist_info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", dist_info.local_rank)
    return torch.device(name)


class TrainingClock:
    """Seconds spent in training steps, and the share of the run done (by time or by steps)."""

    def __init__(self, config: TrainerConfig, spent_s: float = 0.0) -> None:
        self.budget_s = config.budget_minutes * 60 if config.budget_minutes else None
        self.spent_s = spent_s

    @property
    def exhausted(self) -> bool:
        return self.budget_s is not None and self.spent_s >= self.budget_s

    def time_progress(self) -> float | None:
        return None if self.budget_s is None else min(1.0, self.spent_s / self.budget_s)


def lr_lambda(config: TrainerConfig, clock: TrainingClock | None = None) -> Callable[[int], float]:
    """LR factor after ``step`` steps: linear warm-up (in steps), then the decay over the run.

    With a time budget (``clock``), the decay follows the spent share of the budget, so the schedule
    ends when the budget does whatever the step time is.
    """

    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        by_time = clock.time_progress() if clock is not None else None
        if by_time is not None:
            progress = by_time
        else:
            progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        if config.schedule == "poly":
            return (1.0 - progress) ** 0.9
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=tuple(config.betas)
    )


def _move(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    moved = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


def _better(value: float, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def fit(
    model: nn.Module,
    train_dataset: Dataset,
    loss_fn: LossFunction,
    run_dir: Path,
    config: TrainerConfig,
    evaluate_fn: EvaluateFunction | None = None,
    resume: bool = False,
    collate_fn: Callable | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train ``model`` for ``config.steps`` steps and write checkpoints and logs to ``run_dir``.

    Args:
        model: the network, already initialised (identically on every rank).
        train_dataset: indexed by ``(index, augmentation_seed)`` pairs (see ``StepSampler``).
        loss_fn: ``(model, batch) -> (loss, logs)``; runs under autocast. ``batch["step"]`` holds the
            current step (1-based), for losses that follow a schedule.
        evaluate_fn: ``(model, step) -> metrics``; called on rank 0 with the EMA model when EMA is on.
        resume: continue from ``run_dir/checkpoints/last.json`` with optimizer, EMA, schedule, RNG
            and step restored.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    dist_info = setup_distributed()
    device = resolve_device(config.device, dist_info)
    checkpoint_dir = run_dir / "checkpoints"
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    clock = TrainingClock(config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, clock))
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    start_step, best = 0, None

    if resume:
        folder, state = ckpt.load_checkpoint(checkpoint_dir)
        ckpt.load_weights_into(model, folder / "model.safetensors")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if "ema" not in state:
                raise PathsegError(f"{folder}: checkpoint has no EMA state but train.ema_decay > 0")
            ema.load_counters(state["ema"])
            ema.model.load_state_dict(ckpt.load_file(str(folder / "ema.safetensors")))
        ckpt.restore_rng_state(state["rng"])
        start_step, best = state["step"], state.get("best")
        clock.spent_s = float(state.get("train_seconds", 0.0))
        if dist_info.is_main:
            _truncate_log(run_dir / "metrics.jsonl", start_step)
        if start_step >= config.steps:
            raise PathsegError(
                f"{run_dir}: already at step {start_step} of {config.steps}; raise train.steps to go on"
            )
        if clock.exhausted:
            raise PathsegError(
                f"{run_dir}: the training budget of {config.budget_minutes} min is spent "
                f"({clock.spent_s / 60:.1f} min); raise train.budget_minutes to go on"
            )
    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        train_model = torch.compile(train_model)

    sampler = StepSampler(
        len(train_dataset), config.batch_size, config.seed, start_step, dist_info.rank, dist_info.world_size
    )
    # A private generator keeps the loader from drawing on the global torch RNG, whose state a
    # resume restores: otherwise a resumed run would see different dropout/noise than a straight one.
    loader = DataLoader(
        train_dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=config.num_workers > 0,
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if config.precision == "bf16"
        else contextlib.nullcontext()
    )
    log_file = run_dir / "metrics.jsonl"
    writer = _tensorboard(run_dir) if dist_info.is_main else None
    progress = StepProgress(
        config.steps,
        start_step,
        run_dir.name,
        enabled=show_progress and dist_info.is_main,
        budget_s=clock.budget_s,
        spent_s=clock.spent_s,
    )
    batches = iter(loader)
    window_loss, window_count, window_start = 0.0, 0, clock.spent_s

    model.train()
    for step in range(start_step + 1, config.steps + 1):
        step_started = _now()
        batch = _move(next(batches), device, config.channels_last)
        batch["step"] = step
        with autocast:
            loss, logs = loss_fn(train_model, batch)
        if not torch.isfinite(loss):
            raise PathsegError(
                f"{run_dir}: loss became {loss.item()} at step {step}; lower train.lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip).item()
            if config.grad_clip > 0
            else 0.0
        )
        optimizer.step()
        if ema is not None:
            ema.update(model)
        window_loss += loss.item()  # .item() waits for the device, so the clock below is honest
        window_count += 1
        clock.spent_s += _step_seconds(step_started, dist_info)
        scheduler.step()

        if dist_info.is_main and (step % config.log_every == 0 or step == config.steps or clock.exhausted):
            elapsed = clock.spent_s - window_start  # training time only: evaluations are not counted
            record = {
                "step": step,
                "loss": window_loss / window_count,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "images_per_s": window_count * config.batch_size * dist_info.world_size / max(elapsed, 1e-9),
                "train_seconds": clock.spent_s,
                **logs,
            }
            _log(log_file, writer, "train", record)
            window_loss, window_count, window_start = 0.0, 0, clock.spent_s
        progress.update(step, f"loss {loss.item():.4f}", clock.spent_s)

        is_last = step == config.steps or clock.exhausted
        if evaluate_fn is not None and (step % config.eval_every == 0 or is_last):
            if dist_info.is_main:
                eval_model = ema.model if ema is not None else model
                eval_model.eval()
                with torch.no_grad(), autocast:
                    metrics = evaluate_fn(eval_model, step)
                model.train()
                _log(log_file, writer, "val", {"step": step, **metrics})
                value = metrics.get(config.monitor)
                if _better(value, best["value"] if best else None, config.monitor_mode):
                    best = {"step": step, "metric": config.monitor, "value": float(value)}
                progress.log(
                    f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if _scalar(v))
                )
            barrier(dist_info)
            if dist_info.enabled:
                best = broadcast_object(dist_info, best)
        if step % config.checkpoint_every == 0 or is_last or (best is not None and best["step"] == step):
            if dist_info.is_main:
                state = {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": ckpt.capture_rng_state(),
                    "best": best,
                    "train_seconds": clock.spent_s,
                    "trainer_config": asdict(config),
                }
                if ema is not None:
                    state["ema"] = ema.counters()
                keep = (f"step_{best['step']:07d}",) if best else ()
                ckpt.save_checkpoint(checkpoint_dir, step, model, state, ema.model if ema else None, keep)
                if best is not None and best["step"] == step:
                    ckpt.mark_best(checkpoint_dir, step, best["metric"], best["value"])
            barrier(dist_info)
        if is_last:
            break

    progress.close()
    if writer is not None:
        writer.close()
    final_model = ema.model if ema is not None else model
    if dist_info.is_main:
        final_model = _export_final(run_dir, model, final_model, best)
    cleanup_distributed(dist_info)
    return FitResult(
        run_dir=run_dir, final_step=step, best=best, model=final_model, train_seconds=clock.spent_s
    )


def _export_final(run_dir: Path, model: nn.Module, final_model: nn.Module, best: dict | None) -> nn.Module:
    """Write ``run_dir/model.safetensors``: the best checkpoint's weights (EMA when on), else the last."""
    checkpoint_dir = run_dir / "checkpoints"
    pointer = (
        "best.json" if best is not None and ckpt.read_pointer(checkpoint_dir, "best.json") else "last.json"
    )
    info = ckpt.read_pointer(checkpoint_dir, pointer)
    folder = checkpoint_dir / info["dir"]
    source = folder / ("ema.safetensors" if (folder / "ema.safetensors").exists() else "model.safetensors")
    final_model.load_state_dict(ckpt.load_file(str(source)))
    save_weights(final_model, run_dir / "model.safetensors")  # atomic: temporary file, then rename
    ckpt.atomic_write_text(
        run_dir / "final.json", json.dumps({"source": str(source.relative_to(run_dir)), **(best or {})})
    )
    return final_model


def _now() -> float:
    """The training clock (a function of its own so tests can drive it)."""
    return time.perf_counter()


def _step_seconds(started: float, dist_info: DistInfo) -> float:
    """This step's wall time; under DDP the slowest rank's, so every rank stops at the same step."""
    seconds = _now() - started
    if dist_info.enabled and torch.distributed.is_initialized():
        value = torch.tensor([seconds], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            value = value.cuda()
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        seconds = float(value.item())
    return seconds


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint; the resumed run writes them again."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line and json.loads(line).get("step", 0) <= last_step
    ]
    ckpt.atomic_write_text(path, "".join(line + "\n" for line in kept))


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time; JSONL is the source of truth
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _log(path: Path, writer, split: str, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps({"split": split, **record}) + "\n")
    if writer is not None:
        for key, value in record.items():
            if key != "step" and _scalar(value):
                writer.add_scalar(f"{split}/{key}", value, record["step"])
