"""Length-grouped micro-batches: every row once per epoch, far less padding than a plain shuffle."""

from __future__ import annotations

import json
import random

import pytest

from finetune.recipe.schema import Recipe


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """Rows from 5 to 400 words, so shuffled batches mix short and long."""
    path = tmp_path_factory.mktemp("varied") / "varied.jsonl"
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(96):
            words = rng.choice([5, 20, 80, 400])
            f.write(json.dumps({"prompt": f"row {i}", "response": " ".join(["stone"] * words)}) + "\n")
    return path


def batches(tiny_mistral, data_path, tmp_path, **data):
    from finetune.data import prepare_data
    from finetune.model.load import load_base_model, load_tokenizer
    from finetune.train.sft import build_sft_trainer

    recipe = Recipe.model_validate({
        "model": {"base": str(tiny_mistral), "quantization": "none"},
        "data": {"sources": [{"path": str(data_path), "format": "instruct-v3"}], "validation_ratio": 0,
                 "max_length": 1024, **data},
        "train": {"micro_batch_size": 4, "gradient_accumulation_steps": 2, "seed": 3},
        "eval": {"loss": False},
    })
    tokenizer = load_tokenizer(recipe.model)
    prepared = prepare_data(recipe.data, tokenizer)
    trainer = build_sft_trainer(recipe, load_base_model(recipe.model), tokenizer, prepared, tmp_path, [], use_cpu=True)
    return list(trainer.get_train_dataloader())


def padding(loaded) -> float:
    slots = sum(b["input_ids"].numel() for b in loaded)
    return 1 - sum(int(b["attention_mask"].sum()) for b in loaded) / slots


def rows(loaded) -> list[tuple]:
    return sorted(tuple(ids[mask.bool()].tolist()) for b in loaded for ids, mask in zip(b["input_ids"], b["attention_mask"]))


def test_grouped_batches_hold_every_row_once_with_little_padding(tiny_mistral, varied, tmp_path):
    grouped = batches(tiny_mistral, varied, tmp_path)  # data.group_by_length defaults to true
    shuffled = batches(tiny_mistral, varied, tmp_path, group_by_length=False)
    assert len(grouped) == len(shuffled) == 24
    assert rows(grouped) == rows(shuffled)  # the same 96 rows, each exactly once: nothing lost or repeated
    assert padding(grouped) < 0.2 < 0.5 < padding(shuffled), (padding(grouped), padding(shuffled))
    assert max(len(b["input_ids"][0]) for b in grouped[:2]) == max(len(b["input_ids"][0]) for b in grouped)  # longest first
