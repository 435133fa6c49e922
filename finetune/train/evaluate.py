"""Generation eval: greedy answers to held-out prompts, scored by exact match against the references.

Loss says whether the model moved; exact match says whether it does the task.  Prompts are already
encoded by the data path (ending with ``[/INST]``), so the model sees exactly the training format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ExactMatch:
    """The score and a few examples for the run report."""

    score: float
    n: int
    examples: list[dict]


def normalize(text: str) -> str:
    """Compare answers modulo surrounding whitespace and inner runs of spaces."""
    return " ".join(text.split())


@torch.no_grad()
def exact_match(model, tokenizer, prompts, max_new_tokens: int, batch_size: int, max_samples: int | None) -> ExactMatch:
    """Greedy-generate an answer for each ``(prompt_ids, reference)`` and score exact matches."""
    prompts = list(prompts)[: max_samples or None]
    if not prompts:
        return ExactMatch(score=float("nan"), n=0, examples=[])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    correct, hits, misses = 0, [], []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids, _ in batch], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in batch], device=device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for (ids, reference), row in zip(batch, out[:, width:]):
            answer = tokenizer.decode(row, skip_special_tokens=True)
            hit = normalize(answer) == normalize(reference)
            correct += hit
            (hits if hit else misses).append({"reference": reference, "generated": answer, "match": hit})
    model.train(was_training)
    examples = misses[:3] + hits[: 5 - len(misses[:3])]  # failures first: they are what a user reads
    return ExactMatch(score=correct / len(prompts), n=len(prompts), examples=examples)
