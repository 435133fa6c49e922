"""``mistral-ft generate``: one prompt in, one answer streamed out; and the streaming both commands share.

Defaults follow Mistral's reference chat (``mistral-chat`` in mistral-inference): temperature 0.7,
nucleus sampling with top-p 0.8 and no top-k cut (transformers' default of top-k 50 is switched
off). Temperature 0 is greedy decoding. The answer budget is 256 new tokens (mistral-chat's 35 cuts
most answers short). Sampling is seeded (``--seed``, default 0), so the same command gives the same
answer.

Tokens are streamed with a transformers ``TextStreamer`` running in the generating thread: text is
written as soon as a word is complete, nothing is buffered until the end, and an exception or a
Ctrl-C inside ``generate`` reaches the caller directly. Generation stops at the tokenizer's EOS;
special tokens are not shown.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

from finetune.errors import FinetuneError


@dataclass(frozen=True)
class Sampling:
    """How answers are decoded."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.8
    seed: int = 0

    def check(self) -> "Sampling":
        """The flags' values, or a FinetuneError naming the one out of range."""
        if self.max_tokens < 1:
            raise FinetuneError(f"--max-tokens {self.max_tokens}: must be at least 1.")
        if self.temperature < 0:
            raise FinetuneError(f"--temperature {self.temperature}: must be 0 (greedy) or more.")
        if not 0 < self.top_p <= 1:
            raise FinetuneError(f"--top-p {self.top_p}: must be in (0, 1]; 1 disables nucleus sampling.")
        return self

    def generate_kwargs(self) -> dict:
        """The decoding arguments of ``model.generate``: greedy at temperature 0, else nucleus sampling."""
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}


@dataclass(frozen=True)
class Answer:
    """One generated answer and what it cost."""

    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random: sampled answers become reproducible."""
    from transformers import set_seed

    set_seed(seed)


def _streamer(tokenizer, write: Callable[[str], None]):
    """A ``TextStreamer`` that hands each finished piece of text to ``write`` instead of printing."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                write(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def stream_answer(target, prompt_ids: list[int], sampling: Sampling, write: Callable[[str], None],
                  max_new_tokens: int | None = None) -> Answer:
    """Generate an answer to ``prompt_ids`` with ``target`` (an InferenceTarget), passing text to ``write``
    as it is produced. ``max_new_tokens`` caps the budget below ``sampling.max_tokens``."""
    import torch

    model, tokenizer = target.model, target.tokenizer
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    budget = min(sampling.max_tokens, max_new_tokens or sampling.max_tokens)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=budget,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            streamer=_streamer(tokenizer, write),
            use_cache=True,
            **sampling.generate_kwargs(),
        )
    new = out[0, len(prompt_ids):]
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Answer(text, len(prompt_ids), len(new), time.perf_counter() - started)


def positions_left(target, prompt_ids: list[int]) -> int:
    """How many tokens the model can still add after ``prompt_ids`` (its ``max_position_embeddings``)."""
    limit = getattr(target.model.config, "max_position_embeddings", None) or target.context
    return limit - len(prompt_ids)


def read_prompt(value: str, stdin: TextIO | None = None) -> str:
    """The ``--prompt`` text; ``-`` reads it from standard input (final newline removed). Empty is an error."""
    text = (stdin or sys.stdin).read().rstrip("\n") if value == "-" else value
    if not text.strip():
        where = "standard input was empty" if value == "-" else "the prompt is empty"
        raise FinetuneError(f"--prompt: {where}.",
                            hint="Pass the question as --prompt TEXT, or pipe it in with --prompt -.")
    return text


def generate(target: str, prompt: str, system: str | None, sampling: Sampling, console,
             out: TextIO | None = None) -> int:
    """``mistral-ft generate``: load TARGET, answer one prompt on ``out`` (default stdout, streamed); status 0."""
    from finetune.data.conversation import with_system_prompt
    from finetune.lifecycle.target import load_for_inference

    out = out or sys.stdout
    sampling.check()
    text = read_prompt(prompt)
    with console.status(f"loading {target}"):
        loaded = load_for_inference(target)
    console.print(f"[dim]{loaded.description}[/]", highlight=False)
    prompt_ids = loaded.template.encode_prompt(with_system_prompt([{"role": "user", "content": text}], system))
    room = positions_left(loaded, prompt_ids)
    if room < 1:
        raise FinetuneError(
            f"The prompt is {len(prompt_ids):,} tokens; the model handles at most {room + len(prompt_ids):,}.",
            hint="Shorten the prompt.",
        )

    def write(piece: str) -> None:
        out.write(piece)
        out.flush()

    seed_everything(sampling.seed)
    try:
        stream_answer(loaded, prompt_ids, sampling, write, max_new_tokens=room)
        out.write("\n")
        out.flush()
    except BrokenPipeError:
        return reader_gone()
    return 0


def reader_gone() -> int:
    """Standard output's reader went away (``| head -1``): stop quietly, as Unix tools do (status 0)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
    return 0
