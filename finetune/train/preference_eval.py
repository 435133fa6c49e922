"""Preference eval: does the model prefer the chosen answer of held-out pairs?

For every pair the summed log-probability of the chosen answer given the prompt is compared with the
rejected answer's.  Preference accuracy is the fraction of pairs where chosen scores higher; the
margin is the mean of ``log p(chosen) - log p(rejected)``.  Unlike TRL's reward accuracy (which is
measured against the reference model and is 0 before training by construction) this is an absolute
figure, so it is comparable before and after training and across runs.

Works on any causal LM, peft-wrapped or not (the adapter in use is whatever is active).  Rows are
left-padded with explicit position ids, so a padded row sees the same positions as it would alone,
and logits are computed only for the answer positions (``logits_to_keep``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PreferenceScore:
    """Held-out preference figures of one model."""

    accuracy: float
    margin: float
    chosen_logp: float
    rejected_logp: float
    n: int


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


@torch.no_grad()
def answer_logps(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> torch.Tensor:
    """Summed log-probability of each answer given its prompt, for one batch (float32, on the CPU)."""
    device = next(model.parameters()).device
    ids, mask = _left_pad([p + a for p, a in zip(prompts, answers)], pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    longest = max(len(a) for a in answers)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=longest + 1, use_cache=False
    ).logits[:, :-1].float()
    targets = ids[:, -longest:]
    token_logps = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lengths = torch.tensor([len(a) for a in answers], device=device)
    in_answer = torch.arange(longest, device=device) >= (longest - lengths).unsqueeze(1)
    return (token_logps * in_answer).sum(-1).cpu()


def preference_score(model, pairs, pad_id: int, batch_size: int = 16) -> PreferenceScore:
    """Accuracy and margin over ``pairs`` (rows with prompt/chosen/rejected ``_input_ids``)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    rows = list(pairs)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        prompts = [r["prompt_input_ids"] for r in batch]
        logps = answer_logps(
            model, prompts + prompts, [r["chosen_input_ids"] for r in batch] + [r["rejected_input_ids"] for r in batch],
            pad_id,
        )
        chosen.append(logps[: len(batch)])
        rejected.append(logps[len(batch) :])
    model.train(was_training)
    if not rows:
        nan = float("nan")
        return PreferenceScore(nan, nan, nan, nan, 0)
    c, r = torch.cat(chosen), torch.cat(rejected)
    return PreferenceScore(
        accuracy=(c > r).float().mean().item(),
        margin=(c - r).mean().item(),
        chosen_logp=c.mean().item(),
        rejected_logp=r.mean().item(),
        n=len(rows),
    )
