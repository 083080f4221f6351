"""TrainConfig: the JSON round trip saved beside adapters, fail-fast validation, and ``--set``."""

from __future__ import annotations

import json

import pytest

from core.errors import ConfigError
from trainer.cli import train_config
from trainer.config import TrainConfig


def test_round_trips_through_json() -> None:
    """to_dict -> JSON -> from_dict gives an equal config."""
    cfg = TrainConfig(lora_r=8, target_modules=("q_proj", "v_proj"), bf16=True, epochs=1.5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_target_modules_default_to_found_from_the_model() -> None:
    """No target_modules means every attention and MLP linear layer, found per architecture."""
    assert TrainConfig().target_modules == ()
    assert TrainConfig.from_dict({"target_modules": []}) == TrainConfig()


def test_a_subset_fills_in_defaults() -> None:
    """Keys left out take their defaults."""
    assert TrainConfig.from_dict({"max_steps": 10}) == TrainConfig(max_steps=10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lora_rr": 8}, "lora_rr is not a known training setting"),
        ({"lora_r": 0}, "lora_r must be >= 1, got 0"),
        ({"data_fraction": 1.5}, "data_fraction must be in"),
        ({"schedule": "linear"}, "schedule must be one of"),
        (
            {"seq_len": 2048, "max_tokens_per_batch": 1024},
            "max_tokens_per_batch must be >= seq_len",
        ),
        ({"lora_r": "16"}, "lora_r must be like 16, got '16'"),
        ({"packing": 1}, "packing must be like True"),
        ({"target_modules": ["q_proj", ""]}, "target_modules must hold no empty name"),
    ],
)
def test_bad_settings_fail_naming_the_key(data, message) -> None:  # type: ignore[no-untyped-def]
    """An unknown key, a value out of range or of the wrong type fails with the key's name."""
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(data)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["learning_rate=2e-4"], TrainConfig(learning_rate=2e-4)),  # YAML reads 2e-4 as a str
        (["epochs=2", "bf16=true", "lora_r=8"], TrainConfig(epochs=2.0, bf16=True, lora_r=8)),
        (["lora_r=4", "lora_r=8"], TrainConfig(lora_r=8)),  # the last --set of a key wins
    ],
)
def test_set_reads_yaml_scalars_as_the_setting_takes_them(
    overrides: list[str], expected: TrainConfig
) -> None:
    """``--set KEY=VALUE`` values are YAML scalars; a float setting takes a number in any form."""
    assert train_config(None, overrides) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learning_rate=fast"], "learning_rate must be a number, got 'fast'"),
        (["lora_dropout=true"], "lora_dropout must be like 0.05, got True"),
        (["epochs"], "--set 'epochs' must be KEY=VALUE"),
    ],
)
def test_set_fails_naming_the_key(overrides: list[str], message: str) -> None:
    """A value a setting cannot take, or an override without '=', fails naming it."""
    with pytest.raises(ConfigError, match=message):
        train_config(None, overrides)
