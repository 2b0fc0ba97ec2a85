"""Training engine: one loop with mixed precision, EMA, atomic checkpoints, resume and DDP."""

from pathseg.engine.run_info import environment_info, write_run_info
from pathseg.engine.sampling import StepSampler
from pathseg.engine.trainer import FitResult, TrainerConfig, fit

__all__ = ["FitResult", "StepSampler", "TrainerConfig", "environment_info", "fit", "write_run_info"]
