"""configs/accelerate and configs/deepspeed: each file is read by accelerate's own launcher and says what
its comments claim (FSDP2 with full-state-dict saving, ZeRO stages, DeepSpeed JSON found)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

ACCELERATE = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


def launcher_view(config):
    """What ``accelerate launch --config_file CONFIG -m finetune train r.yaml`` resolves the config to."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "finetune", "train", "r.yaml"])
    args, _, _ = _validate_launch_command(args)
    return args


def test_the_four_configs_are_there():
    assert [p.name for p in ACCELERATE] == ["ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"]


@pytest.mark.parametrize("config", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_reads_each_config_and_each_is_commented(config):
    args = launcher_view(config)
    assert args.num_processes == 2 and args.num_machines == 1
    assert config.read_text().startswith("#")  # what it is for and how to launch it


def test_fsdp_config_is_fsdp2_and_gathers_the_full_state_dict(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    env = prepare_multi_gpu_env(launcher_view(REPO / "configs/accelerate/fsdp.yaml"))
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # accelerate validates the combination here
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.transformer_cls_names_to_wrap == ["MistralDecoderLayer"]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_point_at_their_stage(stage):
    args = launcher_view(REPO / f"configs/accelerate/deepspeed_zero{stage}.yaml")
    settings = json.loads((REPO / args.deepspeed_config_file).read_text())
    assert settings["zero_optimization"]["stage"] == stage
    # batch, accumulation, clipping and precision follow the recipe through the trainer
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert settings[key] == "auto"
    if stage == 3:
        assert settings["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_4bit_weights_are_stored_in_the_compute_dtype_so_fsdp_can_shard_them():
    import torch

    from finetune.model.load import quantization_config
    from finetune.recipe.schema import ModelConfig

    for dtype, expected in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        q = quantization_config(ModelConfig(base="x", quantization="4bit", compute_dtype=dtype))
        assert q.bnb_4bit_quant_storage == expected
