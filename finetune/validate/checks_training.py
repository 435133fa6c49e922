"""A training step is numerically sound: forward + backward in the training dtype stay finite.

bf16 on CUDA (what ``compute_dtype: auto`` trains in there), fp32 on CPU, or the recipe's dtype. The
weights stay frozen, as under LoRA: the gradient flows through every layer to the input embeddings
(what the adapters' gradients are made of) without allocating a gradient per weight, so the check
costs one forward and one backward, not an optimizer's memory.
"""

from __future__ import annotations

import contextlib

import torch

from .report import CheckResult
from .probe import Probe

_MAX_TOKENS = 512  # per row: finiteness does not need long rows, and logits + gradients grow with them
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@contextlib.contextmanager
def _frozen(model):
    """Weights without gradients and the model in train mode, both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.train()
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _training_model(probe: Probe, dtype: torch.dtype):
    subject = probe.subject
    if subject.model.dtype == dtype:
        return subject.model, subject.device
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return subject.copy_as(dtype, device), torch.device(device)


def check_training_step(probe: Probe) -> CheckResult:
    """Loss and input gradients of a 2-row batch are finite (and the gradient is not all zero)."""
    subject = probe.subject
    dtype = subject.training_dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    model, device = _training_model(probe, dtype)
    length = min(probe.long_length(), _MAX_TOKENS)
    ids = subject.random_ids(length, batch=2, seed=5).to(device)
    with _frozen(model), torch.enable_grad():
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        loss = model(inputs_embeds=embeds, labels=ids, use_cache=False).loss
        loss.backward()
    grad = embeds.grad
    loss_v = float(loss.detach().float())
    finite = bool(torch.isfinite(loss.detach()).item() and torch.isfinite(grad).all().item())
    norm = float(grad.float().norm())
    ok = finite and norm > 0
    where = f"{_DTYPE_NAMES.get(dtype, dtype)} on {device.type}, batch 2 x {length} tokens, weights frozen as under LoRA"
    detail = f"loss {loss_v:.4g}, input-gradient norm {norm:.3g}; {where}"
    if not finite:
        detail = "NaN/inf in the loss or the gradients: training would diverge at step 1; " + detail
    elif norm == 0:
        detail = "the gradient is exactly zero: nothing would train; " + detail
    return CheckResult("training.step", ok, loss_v, "finite, gradient != 0", detail)
