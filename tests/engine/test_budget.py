"""train.budget_minutes: the run stops when its training time is spent, the LR follows time, a resume
keeps only what is left, and evaluation is not charged to the budget.

The trainer's clock is replaced by a fake one that advances only when the test says (one "second"
per loss call, many per evaluation), so step counts are exact whatever the machine's load.
"""

import json
import math

import pytest

from pathseg.engine import TrainerConfig, fit
from pathseg.engine import trainer as trainer_module
from pathseg.engine.trainer import TrainingClock, lr_lambda
from pathseg.errors import ConfigError, PathsegError
from tests.engine.test_trainer import config
from tests.engine.toy import ToyDataset, toy_loss, toy_model


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(trainer_module, "_now", fake)
    return fake


def budget_config(seconds: float, **overrides) -> TrainerConfig:
    """The trainer tests' config, budgeted: cosine to zero by time, evaluation and logs every step."""
    settings = dict(
        steps=10_000,
        budget_minutes=seconds / 60,
        batch_size=2,
        warmup_steps=0,
        schedule="cosine",
        min_lr_ratio=0.0,
        eval_every=1,
        checkpoint_every=10_000,
        log_every=1,
    )
    return config(**{**settings, **overrides})


def train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def one_second_loss(clock):
    def loss(model, batch):
        clock.now += 1.0
        return toy_loss(model, batch)

    return loss


def test_budget_stops_the_run_and_evaluation_is_not_counted(tmp_path, clock):
    def slow_eval(model, step):
        clock.now += 100.0  # charged to the budget, this would end the run after one step
        return {"score": float(step)}

    result = fit(
        toy_model(),
        ToyDataset(),
        one_second_loss(clock),
        tmp_path,
        budget_config(12),
        evaluate_fn=slow_eval,
        show_progress=False,
    )
    assert result.final_step == 12
    assert result.train_seconds == pytest.approx(12.0)
    records = train_records(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[-1]["train_seconds"] == pytest.approx(12.0)
    # The cosine schedule followed the spent time: lr after step k is lr * cos-factor(k / 12).
    assert records[5]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    checkpoint = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert checkpoint["step"] == 12


def test_resume_keeps_the_remaining_budget(tmp_path, clock):
    loss = one_second_loss(clock)
    first = fit(toy_model(), ToyDataset(), loss, tmp_path, budget_config(5), show_progress=False)
    assert first.final_step == 5
    with pytest.raises(PathsegError, match=r"budget of .* is spent"):
        fit(toy_model(), ToyDataset(), loss, tmp_path, budget_config(5), resume=True)
    second = fit(
        toy_model(), ToyDataset(), loss, tmp_path, budget_config(8), resume=True, show_progress=False
    )
    # Only the 3 missing seconds were trained, not a fresh 8.
    assert second.final_step == 8
    assert second.train_seconds == pytest.approx(8.0)
    assert [r["step"] for r in train_records(tmp_path)] == list(range(1, 9))


def test_steps_still_cap_a_budgeted_run(tmp_path, clock):
    result = fit(
        toy_model(),
        ToyDataset(),
        one_second_loss(clock),
        tmp_path,
        budget_config(50, steps=7),
        show_progress=False,
    )
    assert result.final_step == 7


def test_time_progress_drives_the_schedule():
    config = budget_config(60, warmup_steps=2)
    clock = TrainingClock(config)
    factor = lr_lambda(config, clock)
    assert factor(0) == pytest.approx(0.5)  # warm-up stays in steps
    clock.spent_s = 30.0
    assert factor(100) == pytest.approx(0.5)  # half the budget: cosine at its midpoint
    clock.spent_s = 60.0
    assert factor(5) == pytest.approx(0.0)
    assert clock.exhausted


def test_budget_must_be_positive():
    with pytest.raises(ConfigError, match="budget_minutes"):
        TrainerConfig(budget_minutes=0)
