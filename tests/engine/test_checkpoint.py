import json

import torch

from pathseg.engine import checkpoint as ckpt
from tests.engine.toy import toy_model


def test_checkpoint_round_trip_and_pruning(tmp_path):
    model = toy_model()
    for step in (10, 20, 30):
        ckpt.save_checkpoint(tmp_path, step, model, {"step": step, "rng": ckpt.capture_rng_state()})
        if step == 10:
            ckpt.mark_best(tmp_path, 10, "dice", 0.5)
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == ["step_0000010", "step_0000030"]  # the best and the last survive
    folder, state = ckpt.load_checkpoint(tmp_path)
    assert folder.name == "step_0000030" and state["step"] == 30
    restored = toy_model(seed=1)
    ckpt.load_weights_into(restored, folder / "model.safetensors")
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_half_written_checkpoint_is_never_pointed_to(tmp_path):
    model = toy_model()
    ckpt.save_checkpoint(tmp_path, 5, model, {"step": 5, "rng": ckpt.capture_rng_state()})
    # A kill while writing step 10 leaves only a temporary folder behind.
    (tmp_path / ".tmp-step_0000010-999").mkdir()
    (tmp_path / ".tmp-step_0000010-999" / "model.safetensors").write_bytes(b"partial")
    folder, state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 5 and folder.name == "step_0000005"
    assert json.loads((tmp_path / "last.json").read_text())["step"] == 5


def test_rng_state_round_trip():
    state = ckpt.capture_rng_state()
    expected = torch.rand(3)
    torch.rand(5)
    ckpt.restore_rng_state(state)
    assert torch.equal(torch.rand(3), expected)
