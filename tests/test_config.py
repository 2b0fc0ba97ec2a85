from pathlib import Path

import pytest

from pathseg.config import SupervisedConfig, parse_override, resolve_config
from pathseg.errors import ConfigError


def test_overrides_are_parsed_as_yaml_and_nested():
    assert parse_override("train.steps=500") == (["train", "steps"], 500)
    assert parse_override("data.classes={a: 0, b: 255}") == (["data", "classes"], {"a": 0, "b": 255})
    config = resolve_config(
        SupervisedConfig, None, ["train.lr=3e-4", "model.name=unet", "model.base_channels=8"]
    )
    assert config.train.lr == pytest.approx(3e-4)
    assert config.model.kwargs() == {"base_channels": 8}


def test_file_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 10\n  batch_size: 2\n")
    config = resolve_config(SupervisedConfig, path, ["train.steps=20"])
    assert (config.train.steps, config.train.batch_size) == (20, 2)


def test_unknown_key_suggests_the_right_one(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batchsize: 2\n")
    with pytest.raises(
        ConfigError, match=r"c.yaml: unknown config key 'train.batchsize' \(did you mean 'batch_size'"
    ):
        resolve_config(SupervisedConfig, path)


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"config key 'train\.steps'"):
        resolve_config(SupervisedConfig, None, ["train.steps=many"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        resolve_config(SupervisedConfig, None, ["train.steps"])
