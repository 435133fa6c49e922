"""Packing without leakage: best-fit decreasing bins, and per-row losses of a packed batch equal to the
same rows unpacked (fp32, sdpa_windowed, sdpa and eager), rows longer than the sliding window included."""

from __future__ import annotations

import random

import pytest
import torch

from finetune.data.packing import IGNORE, PackedCollator, best_fit_decreasing, pack_dataset


def test_bins_hold_every_row_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) <= lower_bound * 1.05  # near-optimal on random lengths
    assert best_fit_decreasing(lengths, 128) == bins  # deterministic
    assert best_fit_decreasing([70, 60, 50, 40, 30], 100) == [[0, 4], [1, 3], [2]]  # tightest fit first
    with pytest.raises(ValueError, match="129 tokens"):
        best_fit_decreasing([129], 128)


def test_collator_restarts_positions_and_never_trains_across_rows():
    import datasets

    rows = datasets.Dataset.from_dict({
        "input_ids": [[1, 10, 11, 2], [1, 20, 2], [1, 30, 31, 32, 2]],
        "completion_mask": [[0, 0, 1, 1], [0, 1, 1], [0, 0, 0, 1, 1]],
    })
    packed = pack_dataset(rows, capacity=8)
    assert len(packed) == 2
    batch = PackedCollator(pad_token_id=2)([packed[0], packed[1]])
    assert "attention_mask" not in batch  # transformers derives the block-diagonal mask from position_ids
    first = batch["input_ids"][0].tolist()
    assert first == [1, 30, 31, 32, 2, 1, 20, 2]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch["labels"][0].tolist() == [IGNORE, IGNORE, IGNORE, 32, 2, IGNORE, 20, 2]  # BOS of row 2: no loss
    assert batch["input_ids"][1].tolist()[:4] == [1, 10, 11, 2]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # the padding is its own segment
    assert batch["labels"][1].tolist()[4:] == [IGNORE] * 4
    assert int(batch["num_real_tokens"]) == 12

    text_rows = {"input_ids": [1, 5, 2, 1, 6, 2], "completion_mask": [1] * 6, "position_ids": [0, 1, 2, 0, 1, 2]}
    labels = PackedCollator(pad_token_id=2)([text_rows])["labels"][0].tolist()
    assert labels == [IGNORE, 5, 2, IGNORE, 6, 2]  # a trained BOS is still never predicted from the row before


def per_token_loss(logits, labels):
    """Cross-entropy of each position's prediction of the next label (0 where the label is ignored)."""
    loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=IGNORE, reduction="none")
    return torch.cat([torch.zeros(1), loss])  # aligned with the label it predicts


@pytest.mark.parametrize("attention", ["sdpa_windowed", "sdpa", "eager"])
def test_packed_rows_have_the_losses_they_have_alone(attention, monkeypatch):
    from transformers import MistralConfig, MistralForCausalLM

    from finetune.model import windowed_attention

    monkeypatch.setattr(windowed_attention, "QUERY_BLOCK", 8)  # blocks much shorter than the packed row
    attention = windowed_attention.attention_backend(attention)
    torch.manual_seed(0)
    window = 8
    config = MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                           max_position_embeddings=128, attn_implementation=attention)
    model = MistralForCausalLM(config).eval()
    rng = random.Random(1)
    rows = []
    for length in (30, 5, 21, 9, 3 * window + 1):  # three rows longer than the window
        ids = [1] + [rng.randint(3, 299) for _ in range(length - 2)] + [2]
        mask = [0] * (length // 2) + [1] * (length - length // 2)
        rows.append({"input_ids": ids, "completion_mask": mask})
    collate = PackedCollator(pad_token_id=2)

    alone = []
    for row in rows:
        batch = collate([row])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone.append(float(per_token_loss(logits, batch["labels"]).sum()))

    packed_row = {
        "input_ids": [t for r in rows for t in r["input_ids"]],
        "completion_mask": [m for r in rows for m in r["completion_mask"]],
        "position_ids": [p for r in rows for p in range(len(r["input_ids"]))],
    }
    batch = collate([packed_row, rows[1]])  # a second, shorter row: padding in the same micro-batch
    with torch.no_grad():  # as in training: no KV cache (with one, transformers would not look for packing)
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    losses = per_token_loss(logits[:1], batch["labels"][:1])
    start = 0
    for row, expected in zip(rows, alone):
        end = start + len(row["input_ids"])
        assert float(losses[start:end].sum()) == pytest.approx(expected, abs=1e-4), (start, end)
        start = end

    # without the restarts the rows would see each other: the check above can fail
    with torch.no_grad():
        leaked = model(input_ids=batch["input_ids"][:1], use_cache=False).logits
    assert float(per_token_loss(leaked, batch["labels"][:1])[len(rows[0]["input_ids"]):].sum()) != pytest.approx(
        sum(alone[1:]), abs=1e-2)
