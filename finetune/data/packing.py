"""Packing without leakage: several tokenized rows in one fixed-length sequence, each still on its own.

``data.packing: true`` fills bins of ``data.max_length`` tokens with whole rows, best-fit decreasing
(longest row first, into the fullest bin it still fits), so little space is left as padding.  Inside
a bin nothing crosses a row boundary:

* ``position_ids`` restart at 0 for every row, so RoPE sees each row as if it were alone;
* no ``attention_mask`` (and no KV cache, as in any training step) is passed: transformers
  (``masking_utils.find_packed_sequence_indices``) then reads the restarts and builds, for sdpa and eager, the block-diagonal ∧ causal ∧ sliding-window
  mask (with flash-attention the same restarts become variable-length sequences);
* labels are -100 wherever the row's mask says "not trained", which includes each row's first token
  (BOS), so the last token of one row is never asked to predict the first token of the next.

The padding at the end of a micro-batch is a segment of its own (positions restart there too), so it
attends only to itself and carries no loss.  ``tests/data/test_packing.py`` checks the per-row
losses of a packed batch against the same rows one by one, including rows longer than the window.
"""

from __future__ import annotations

import bisect

import torch

IGNORE = -100


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices grouped into bins of at most ``capacity`` tokens (every row exactly once)."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"a row of {max(lengths)} tokens cannot be packed into bins of {capacity}")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin number), sorted: the tightest fit is found by bisect
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[index]
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            bins.append([index])
            bisect.insort(free, (capacity - n, len(bins) - 1))
            continue
        space, number = free.pop(at)
        bins[number].append(index)
        bisect.insort(free, (space - n, number))
    return bins


def pack_dataset(dataset, capacity: int):
    """The rows of an ``input_ids`` / ``completion_mask`` dataset packed into bins, with ``position_ids``."""
    import datasets

    ids, masks = dataset["input_ids"], dataset["completion_mask"]
    packed: dict[str, list] = {"input_ids": [], "completion_mask": [], "position_ids": []}
    for rows in best_fit_decreasing([len(x) for x in ids], capacity):
        packed["input_ids"].append([t for r in rows for t in ids[r]])
        packed["completion_mask"].append([m for r in rows for m in masks[r]])
        packed["position_ids"].append([p for r in rows for p in range(len(ids[r]))])
    return datasets.Dataset.from_dict(packed)


class PackedCollator:
    """Micro-batches of packed bins (or plain rows) for the model: ``input_ids``, ``position_ids``, ``labels``.

    Rows without ``position_ids`` are one segment each (so the held-out set can stay unpacked).  The
    batch is padded to its longest sequence; ``num_real_tokens`` (popped by the trainer before the
    forward pass) counts the tokens that are not padding.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = torch.tensor(example["input_ids"], dtype=torch.long)
            mask = torch.tensor(example["completion_mask"], dtype=torch.bool)
            n = len(ids)
            input_ids[row, :n] = ids
            labels[row, :n] = torch.where(mask, ids, IGNORE)
            positions = example.get("position_ids")
            position_ids[row, :n] = torch.tensor(positions) if positions is not None else torch.arange(n)
            position_ids[row, n:] = torch.arange(longest - n)  # padding: a segment of its own
        labels[position_ids == 0] = IGNORE  # a row's first token is never a target, even when trained (text rows)
        real = sum(len(e["input_ids"]) for e in examples)
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
                "num_real_tokens": torch.tensor(real)}
