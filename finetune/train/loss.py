"""The causal-LM loss without the full ``[tokens × vocab]`` logits.

A stock ``MistralForCausalLM`` forward projects *every* position onto the 32,000-word vocabulary,
keeps those fp32 logits (batch × length × 32000 × 4 bytes: 0.5 GB for 4 × 1024 tokens) alive for the
backward pass, and then ignores most of them: prompt tokens and padding carry no loss.  On a small
model the projection is most of the step; on a 7B model the buffer is most of the activation memory.

:func:`causal_lm_loss` instead takes the decoder's last hidden states, keeps only the positions whose
next token is trained, and computes the cross-entropy a chunk of rows at a time.  The gradient of
each chunk is worked out in the same pass (``softmax − one-hot``, projected back through the head),
so the backward pass has nothing left to recompute and no logits chunk outlives its loop iteration —
the same idea as liger-kernel's fused linear cross-entropy, which is used instead on a CUDA device
when it is installed.  The result equals transformers' ``ForCausalLMLoss`` (sum over trained tokens
divided by ``num_items_in_batch``, or their mean when that is not given).
"""

from __future__ import annotations

import torch

IGNORE = -100
# Positions per chunk: 512 × 32000 fp32 logits = 66 MB at a time. bench/block_sizes.py on the 2-core CPU:
# 512 and 1024 equally fast (within 1 %, 1.14× the two bare matrix products), so the smaller buffer.
CHUNK_ROWS = 512


def causal_lm_loss(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor,
                   num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Next-token cross-entropy of ``labels`` [batch, length] from ``hidden`` [batch, length, dim]."""
    targets = labels[:, 1:]
    trained = targets != IGNORE
    rows = hidden[:, :-1][trained]  # only positions that predict a trained token reach the head
    total = linear_cross_entropy_sum(rows, head.weight, targets[trained])
    count = num_items_in_batch if num_items_in_batch is not None else trained.sum()
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count


def linear_cross_entropy_sum(rows: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``sum(cross_entropy(rows @ weight.T, targets))`` in fp32, fused on CUDA with liger when installed."""
    if rows.shape[0] == 0:  # no trained token in this micro-batch: a zero that still reaches every input
        return (rows.sum() + weight.sum()) * 0.0
    if rows.is_cuda and _liger_available():
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")(weight, rows, targets).float()
    need_grad = torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(rows, weight, targets, need_grad)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of a linear projection, one chunk of rows at a time, gradients included."""

    @staticmethod
    def forward(ctx, rows, weight, targets, need_grad):
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        grad_rows = torch.zeros_like(rows, dtype=torch.float32) if need_grad and rows.requires_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad and weight.requires_grad else None
        logits_buffer = None  # one chunk of fp32 logits, reused (fresh large allocations cost page faults)
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            chunk, target = rows[start:start + CHUNK_ROWS], targets[start:start + CHUNK_ROWS]
            if weight.dtype == torch.float32:
                if logits_buffer is None:
                    logits_buffer = rows.new_empty((min(CHUNK_ROWS, rows.shape[0]), weight.shape[0]), dtype=torch.float32)
                logits = torch.mm(chunk, weight.T, out=logits_buffer[: len(target)])
            else:
                logits = (chunk @ weight.T).float()
            target_logit = logits.gather(1, target[:, None])
            peak = logits.amax(dim=-1, keepdim=True)
            exps = logits.sub_(peak).exp_()  # in place: the logits are not needed again
            norm = exps.sum(dim=-1, keepdim=True)
            total += (peak + norm.log() - target_logit).sum()  # log-sum-exp minus the target's logit
            if grad_rows is None and grad_weight is None:
                continue
            probs = exps.div_(norm)
            probs[torch.arange(len(target), device=probs.device), target] -= 1  # d(sum CE)/d(logits)
            if grad_rows is not None:
                grad_rows[start:start + CHUNK_ROWS] = probs.to(weight.dtype) @ weight
            if grad_weight is not None:
                grad_weight += probs.T @ chunk.float()
        ctx.save_for_backward(grad_rows, grad_weight)
        ctx.rows_dtype, ctx.weight_dtype = rows.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_rows, grad_weight = ctx.saved_tensors
        scale = grad_total.float()  # the gradients stay fp32 until scaled (1/N, processes, a GradScaler's factor)
        if grad_rows is not None:
            grad_rows = (grad_rows * scale).to(ctx.rows_dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(ctx.weight_dtype)
        return grad_rows, grad_weight, None, None


def _liger_available() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True
