"""Block sizes of the training step's two blocked kernels, swept side by side in one process.

* ``finetune.train.loss.CHUNK_ROWS`` — rows per chunk of the chunked linear cross-entropy: 4096
  trained positions, hidden 256, vocabulary 32,000 (the fixed CPU work of ``train_throughput.py``),
  forward + backward; the two plain matrix products the loss cannot avoid are timed as the floor.
* ``finetune.model.windowed_attention.QUERY_BLOCK`` — queries per block of ``sdpa_windowed``:
  4 rows × 1024 tokens, 8 heads, 2 KV heads, head dim 32, window 256, forward + backward; transformers'
  ``sdpa`` on the same inputs and mask is the baseline.

Each figure is the best of ``--repeat`` runs, the candidates interleaved round by round so the
machine's drift hits them alike. Printed as a markdown table with ratios to the baseline.

    python bench/block_sizes.py --threads 2 --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import finetune.model.windowed_attention as windowed  # noqa: E402
import finetune.train.loss as loss  # noqa: E402


def loss_case(chunk_rows: int | None):
    """fwd + bwd of the chunked loss at ``chunk_rows`` (None: the two matrix products alone)."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(4096, 256, generator=generator, requires_grad=True)
    weight = torch.randn(32000, 256, generator=generator) * 0.05
    targets = torch.randint(0, 32000, (4096,), generator=generator)

    def run():
        if chunk_rows is None:
            (rows.detach() @ weight.T) @ weight
            return
        loss.CHUNK_ROWS = chunk_rows
        loss.linear_cross_entropy_sum(rows, weight, targets).backward()
    return run


class _Attention(torch.nn.Module):
    num_key_value_groups, is_causal = 4, True


def attention_case(query_block: int | None):
    """fwd + bwd of ``sdpa_windowed`` at ``query_block`` (None: transformers' sdpa)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, kv_heads, length, dim, window = 4, 8, 2, 1024, 32, 256
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, length, dim, generator=generator, requires_grad=True)
    k = torch.randn(batch, kv_heads, length, dim, generator=generator, requires_grad=True)
    v = torch.randn(batch, kv_heads, length, dim, generator=generator, requires_grad=True)
    i = torch.arange(length)
    mask = ((i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window))[None, None].expand(batch, 1, -1, -1)
    module = _Attention()

    def run():
        if query_block is None:
            out, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim ** -0.5)
        else:
            windowed.QUERY_BLOCK = query_block
            out, _ = windowed.windowed_sdpa_forward(module, q, k, v, mask, scaling=dim ** -0.5, sliding_window=window)
        out.sum().backward()
    return run


def sweep(cases: dict[str, callable], repeat: int) -> dict[str, float]:
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeat):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def table(title: str, best: dict[str, float], baseline: str) -> str:
    lines = [f"| {title} | s (best) | × {baseline} |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.3f} | {best[baseline] / seconds:.2f} |" for name, seconds in best.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chunks = {"two matrix products": loss_case(None), **{f"CHUNK_ROWS {n}": loss_case(n) for n in (256, 512, 1024, 2048)}}
    print(table("chunked loss", sweep(chunks, args.repeat), "CHUNK_ROWS 1024"), end="\n\n")
    blocks = {"sdpa": attention_case(None), **{f"QUERY_BLOCK {n}": attention_case(n) for n in (128, 256, 384, 512)}}
    print(table("attention", sweep(blocks, args.repeat), "sdpa"))


if __name__ == "__main__":
    main()
