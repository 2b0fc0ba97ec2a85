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
