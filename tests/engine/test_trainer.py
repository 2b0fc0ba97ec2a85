import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pathseg.engine import TrainerConfig, fit
from pathseg.errors import PathsegError
from tests.engine.toy import ToyDataset, toy_loss, toy_model

REPO = Path(__file__).resolve().parents[2]


def config(**overrides) -> TrainerConfig:
    base = dict(
        steps=12,
        batch_size=4,
        lr=1e-2,
        warmup_steps=3,
        schedule="constant",
        ema_decay=0.9,
        precision="fp32",
        eval_every=4,
        checkpoint_every=4,
        log_every=2,
        seed=7,
        monitor="score",
        monitor_mode="min",
    )
    base.update(overrides)
    return TrainerConfig(**base)


def weights(run_dir: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())["dir"]
    return load_file(str(run_dir / "checkpoints" / last / name))


def fake_eval(model, step):
    # Depends on the weights, so "best" genuinely tracks training.
    return {"score": float(sum(p.abs().sum() for p in model.parameters()))}


def test_fit_writes_logs_checkpoints_and_final_model(tmp_path):
    result = fit(
        toy_model(), ToyDataset(), toy_loss, tmp_path, config(), evaluate_fn=fake_eval, show_progress=False
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in records if r["split"] == "val"] == [4, 8, 12]
    assert (tmp_path / "model.safetensors").exists()
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert best["step"] == result.best["step"]
    val = {r["step"]: r["score"] for r in records if r["split"] == "val"}
    assert best["value"] == pytest.approx(min(val.values()))
    assert list((tmp_path / "tensorboard").iterdir())


def test_loss_goes_down(tmp_path):
    fit(
        toy_model(),
        ToyDataset(),
        toy_loss,
        tmp_path,
        config(steps=60, log_every=10, ema_decay=0.0),
        show_progress=False,
    )
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0]


def test_resume_matches_uninterrupted_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(toy_model(), ToyDataset(), toy_loss, straight, config(), evaluate_fn=fake_eval, show_progress=False)
    fit(
        toy_model(),
        ToyDataset(),
        toy_loss,
        split,
        config(steps=8),
        evaluate_fn=fake_eval,
        show_progress=False,
    )
    # A fresh model object with different init: everything must come from the checkpoint.
    fit(
        toy_model(seed=99),
        ToyDataset(),
        toy_loss,
        split,
        config(),
        evaluate_fn=fake_eval,
        resume=True,
        show_progress=False,
    )
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(straight, name), weights(split, name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PathsegError, match="nothing to resume"):
        fit(toy_model(), ToyDataset(), toy_loss, tmp_path, config(), resume=True, show_progress=False)


def test_nan_loss_is_reported(tmp_path):
    def bad_loss(model, batch):
        return model(batch["image"]).sum() * float("nan"), {}

    with pytest.raises(PathsegError, match="loss became nan at step 1"):
        fit(toy_model(), ToyDataset(), bad_loss, tmp_path, config(), show_progress=False)


DDP_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from pathseg.engine import TrainerConfig, fit
from tests.engine.toy import ToyDataset, toy_loss, toy_model
cfg = TrainerConfig(steps=6, batch_size={batch}, lr=1e-2, warmup_steps=0, schedule="constant",
                    precision="fp32", checkpoint_every=6, log_every=1, seed=3, grad_clip=0.0)
model = toy_model()
model[3].p = 0.0  # no dropout: its masks differ per rank
fit(model, ToyDataset(), toy_loss, Path({out!r}), cfg, show_progress=False)
"""


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_double_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, batch, launcher in (
        (
            "ddp",
            2,
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"],
        ),
        ("single", 4, [sys.executable]),
    ):
        script = tmp_path / f"{name}.py"
        script.write_text(DDP_SCRIPT.format(repo=str(REPO), batch=batch, out=str(tmp_path / name)))
        done = subprocess.run([*launcher, str(script)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_channels_last_trains_the_same_weights(tmp_path):
    """The NHWC layout is a speed option only: same steps, same weights (fp32, up to kernel rounding)."""
    seen_layouts = []

    def recording_loss(model, batch):
        seen_layouts.append(batch["image"].is_contiguous(memory_format=torch.channels_last))
        return toy_loss(model, batch)

    def without_dropout():  # dropout masks are drawn in memory order, which the layout changes
        model = toy_model()
        model[3].p = 0.0
        return model

    plain, nhwc = tmp_path / "plain", tmp_path / "nhwc"
    fit(without_dropout(), ToyDataset(), toy_loss, plain, config(steps=6), show_progress=False)
    result = fit(
        without_dropout(),
        ToyDataset(),
        recording_loss,
        nhwc,
        config(steps=6, channels_last=True),
        show_progress=False,
    )
    assert all(seen_layouts) and len(seen_layouts) == 6
    assert result.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    a, b = weights(plain), weights(nhwc)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_sgd_optimizer_uses_the_configured_momentum(tmp_path):
    from pathseg.engine.trainer import make_optimizer

    model = toy_model()
    sgd = make_optimizer(model, config(optimizer="sgd", momentum=0.7, weight_decay=5e-4))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.7 and sgd.param_groups[0]["weight_decay"] == 5e-4
    assert isinstance(make_optimizer(model, config()), torch.optim.AdamW)
    with pytest.raises(PathsegError, match=r"train\.optimizer must be 'adamw' or 'sgd'"):
        config(optimizer="adam")
    # fit() trains with it: the checkpoint holds SGD's state (momentum buffers, no Adam moments).
    fit(
        toy_model(),
        ToyDataset(),
        toy_loss,
        tmp_path,
        config(steps=4, optimizer="sgd", momentum=0.7),
        show_progress=False,
    )
    state = torch.load(tmp_path / "checkpoints" / "step_0000004" / "training_state.pt", weights_only=False)
    group = state["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.7 and "betas" not in group
    assert all("momentum_buffer" in s and "exp_avg" not in s for s in state["optimizer"]["state"].values())


def test_poly_schedule_follows_one_minus_progress_to_the_0_9(tmp_path):
    from pathseg.engine.trainer import lr_lambda

    cfg = config(steps=12, warmup_steps=2, schedule="poly", lr=0.1, log_every=1, eval_every=100)
    factor = lr_lambda(cfg)
    assert [factor(s) for s in (0, 1)] == [0.5, 1.0]  # linear warm-up
    for step in range(2, 13):
        assert factor(step) == pytest.approx((1 - (step - 2) / 10) ** 0.9)
    assert factor(12) == 0.0 and factor(7) == pytest.approx(0.5**0.9)
    # The logged learning rate after step s is lr * factor(s).
    fit(toy_model(), ToyDataset(), toy_loss, tmp_path, cfg, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["lr"] for r in records if r["split"] == "train"}
    assert sorted(logged) == list(range(1, 13))
    for step, lr in logged.items():
        assert lr == pytest.approx(0.1 * factor(step), abs=1e-12)


def test_loss_fn_sees_the_step_number_in_order(tmp_path):
    seen = []

    def recording_loss(model, batch):
        seen.append(batch["step"])
        return toy_loss(model, batch)

    fit(toy_model(), ToyDataset(), recording_loss, tmp_path / "a", config(steps=6), show_progress=False)
    assert seen == [1, 2, 3, 4, 5, 6]
    # A resumed run goes on counting from its checkpoint.
    seen.clear()
    fit(
        toy_model(),
        ToyDataset(),
        recording_loss,
        tmp_path / "a",
        config(steps=10),
        resume=True,
        show_progress=False,
    )
    assert seen == [7, 8, 9, 10]
