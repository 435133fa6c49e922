"""``prepare_data``: the recipe's ``data:`` section -> tokenized train/eval sets with loss masks.

Step by step:

1. load every source into parsed examples (:mod:`~finetune.data.examples`);
2. mix the training sources and shuffle them with ``data.seed``;
3. held-out rows: ``validation_sources`` when given, else a ``validation_ratio`` slice of the
   shuffled rows (so the split does not depend on the tokenizer);
4. encode each example with the template (or as plain text) and apply ``data.overlong``;
5. build ``datasets.Dataset`` objects with ``input_ids`` and ``completion_mask`` — the columns
   TRL's ``DataCollatorForLanguageModeling(completion_only_loss=True)`` reads — plus generation
   prompts for the held-out conversations.

This function caches nothing; :mod:`finetune.data.cache` stores its result under a key made of
everything that decides it, so a changed tokenizer can never meet stale token ids.
"""

from __future__ import annotations

import multiprocessing
import os
import random
from dataclasses import dataclass
from typing import NamedTuple

from finetune.data.conversation import PreferencePair
from finetune.data.examples import Item, load_examples
from finetune.data.bad_rows import RejectedRows
from finetune.data.report import NOTHING_TRAINED, OVERLONG, DataReport
from finetune.data.template import Encoded, Template, encode_text_example, select_template
from finetune.data.text_encoder import TextEncoder, text_encoder
from finetune.errors import FinetuneError
from finetune.recipe.schema import DataConfig

_OVERLONG_SHOWN = 5


class EvalPrompt(NamedTuple):
    """A held-out prompt encoded for generation, and the reference answer to score against."""

    prompt_ids: list[int]
    reference: str


@dataclass
class PreparedData:
    """What training and evaluation consume.

    ``train`` / ``eval`` have columns ``input_ids`` and ``completion_mask`` (1 = trained);
    ``eval`` is None when nothing is held out.
    """

    train: "datasets.Dataset"  # noqa: F821
    eval: "datasets.Dataset | None"  # noqa: F821
    eval_prompts: list[EvalPrompt]
    report: DataReport
    template: Template
    rejected: RejectedRows


def prepare_data(data: DataConfig, tokenizer) -> PreparedData:
    """Read, split, encode and mask the rows described by ``data`` (see the module docstring)."""
    encode_text = text_encoder(tokenizer)
    template = select_template(tokenizer, data.template, encode_text)
    report = DataReport(template.name, encode_text.kind, data.max_length, data.overlong)

    rejected = RejectedRows(data.on_bad_row)
    train_items, eval_items = split_items(data, report, "rows", rejected)
    if not data.validation_sources and data.validation_ratio > 0 and not eval_items:
        report.notes.append("validation_ratio > 0 but a single training row: nothing held out")

    encoder = _Encoder(template, encode_text, tokenizer, data, rejected)
    train = encoder.encode_all(train_items)
    evaluation = encoder.encode_all(eval_items)
    rejected.raise_if_bad()
    encoder.raise_if_overlong()
    if eval_items and not evaluation:
        report.notes.append("every held-out row was dropped by data.overlong: no held-out loss")

    if not train:
        raise FinetuneError(
            f"No training rows are left: data.overlong = {data.overlong} dropped every one of the "
            f"{len(train_items):,} training rows (data.max_length = {data.max_length:,}).",
            hint="Raise data.max_length, or set `data.overlong: truncate`." if data.overlong != "truncate" else
            "Raise data.max_length: truncation keeps a row's first max_length tokens, so a row whose prompt fills "
            "them has no trained token left.",
        )
    prompts = eval_prompts(evaluation, template, data.max_length, report)
    report.train_rows, report.eval_rows = len(train), len(evaluation)
    report.train_tokens = sum(len(enc) for _, enc in train)
    report.trained_tokens = sum(enc.trained for _, enc in train)
    report.eval_prompts = len(prompts)
    evaluation_set = to_dataset(evaluation) if evaluation else None
    return PreparedData(to_dataset(train), evaluation_set, prompts, report, template, rejected)


def load_items(sources, key: str, seed: int, report: DataReport, rejected: RejectedRows) -> list[Item]:
    """All examples of ``sources`` concatenated, then shuffled with ``seed``; bad rows go to ``rejected``."""
    items: list[Item] = []
    for index, source in enumerate(sources):
        loaded, source_report = load_examples(source, f"{key}[{index}]", rejected)
        report.sources.append(source_report)
        items.extend(loaded)
    random.Random(seed).shuffle(items)
    return items


def split_items(
    data: DataConfig, report: DataReport, unit: str, rejected: RejectedRows
) -> tuple[list[Item], list[Item]]:
    """(train, held out) items of ``data``: ``validation_sources`` when given, else a
    ``validation_ratio`` slice of the shuffled training items; the origin is recorded in ``report``."""
    train_items = load_items(data.sources, "data.sources", data.seed, report, rejected)
    if data.validation_sources:
        report.eval_origin = "validation_sources"
        return train_items, load_items(data.validation_sources, "data.validation_sources", data.seed, report, rejected)
    report.eval_origin = f"validation_ratio {data.validation_ratio:g} of the training {unit}"
    return hold_out(train_items, data.validation_ratio)


def hold_out(items: list, ratio: float) -> tuple[list, list]:
    """(train, held out): the first ``ratio`` of the (already shuffled) items, at least 1 when
    ``ratio > 0`` and there are 2 or more, and never all of them."""
    if ratio <= 0 or len(items) < 2:
        return items, []
    count = min(len(items) - 1, max(1, int(len(items) * ratio + 0.5)))
    return items[count:], items[:count]


class _Encoder:
    """Encodes items and applies the overlong policy, counting every outcome in the item's report."""

    def __init__(self, template: Template, encode_text: TextEncoder, tokenizer, data: DataConfig, rejected: RejectedRows):
        self.template = template
        self.encode_text = encode_text
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.data = data
        self.rejected = rejected
        self.overlong: list[tuple[Item, int]] = []

    def encode(self, example) -> Encoded | FinetuneError:
        """Ids and mask of one example (a plain text is BOS + text + EOS, all trained), or the error
        of a conversation the template cannot render (returned, so it travels back from a worker)."""
        if isinstance(example, str):
            return encode_text_example(example, self.encode_text, self.bos_id, self.eos_id)
        try:
            return self.template.encode(example, self.data.train_on)
        except FinetuneError as err:
            return err

    def encode_all(self, items: list[Item]) -> list[tuple[Item, Encoded]]:
        """The kept (item, encoding) pairs, in order; template failures become bad rows."""
        for item in items:
            if isinstance(item.example, PreferencePair):
                raise FinetuneError(
                    f"{item.report.key} is in the preference format, which trains with `train.method: dpo` "
                    "(finetune.data.preferences), not on single responses."
                )
        kept = []
        for item, encoded in zip(items, encode_in_parallel(self, [item.example for item in items])):
            if isinstance(encoded, FinetuneError):
                self.rejected.item_failed(item, encoded)
                continue
            encoded = self.fit(item, encoded)
            if encoded is not None:
                item.report.kept += 1
                kept.append((item, encoded))
        return kept

    def fit(self, item: Item, encoded: Encoded) -> Encoded | None:
        """Apply ``data.overlong`` to one encoding: the encoding to keep, or None (counted as dropped)."""
        limit = self.data.max_length
        if len(encoded) <= limit:
            return encoded
        if self.data.overlong == "error":
            self.overlong.append((item, len(encoded)))
            return None
        if self.data.overlong == "drop":
            self.rejected.item_dropped(item, OVERLONG, f"{len(encoded):,} tokens, longer than data.max_length = {limit:,} (data.overlong: drop)")
            return None
        cut = encoded.truncated(limit)
        if cut.trained == 0:
            self.rejected.item_dropped(item, NOTHING_TRAINED, f"{len(encoded):,} tokens; truncating to {limit:,} left no trained token")
            return None
        item.report.truncated += 1
        return cut

    def raise_if_overlong(self) -> None:
        """Under ``overlong: error``, one error listing the first offending rows and the options."""
        if not self.overlong:
            return
        in_file_order = sorted(self.overlong, key=lambda pair: (pair[0].report.key, pair[0].order))
        shown = "; ".join(
            f"{item.report.key} {item.where} ({length:,} tokens)" for item, length in in_file_order[:_OVERLONG_SHOWN]
        )
        more = f" and {len(self.overlong) - _OVERLONG_SHOWN:,} more" if len(self.overlong) > _OVERLONG_SHOWN else ""
        longest = max(length for _, length in self.overlong)
        raise FinetuneError(
            f"{len(self.overlong):,} rows are longer than data.max_length = {self.data.max_length:,} tokens "
            f"(longest {longest:,}): {shown}{more}.",
            hint="Choose one: `data.overlong: truncate` (cut rows to max_length; rows left with no "
            "trained token are dropped), `data.overlong: drop` (skip them), or raise "
            f"`data.max_length` to at least {longest:,}. Each choice is counted in the data report.",
        )


# Below this many rows one process is faster than starting workers.
PARALLEL_FROM = 4000
_worker_encoder: _Encoder | None = None


def encode_in_parallel(encoder: _Encoder, examples: list) -> list:
    """``encoder.encode`` over ``examples``, in order; on several CPU cores for large data sets.

    Workers are forked, so they share the loaded tokenizer and template without pickling them; only
    the examples go out and the token ids come back.
    """
    workers = min(len(os.sched_getaffinity(0)), 8, len(examples) // (PARALLEL_FROM // 2))
    if len(examples) < PARALLEL_FROM or workers < 2:
        return [encoder.encode(example) for example in examples]
    global _worker_encoder
    _worker_encoder = encoder
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_encode_in_worker, examples, chunksize=256)
    finally:
        _worker_encoder = None


def _encode_in_worker(example):
    return _worker_encoder.encode(example)


def eval_prompts(
    evaluation: list[tuple[Item, Encoded]], template: Template, max_length: int, report: DataReport
) -> list[EvalPrompt]:
    """Generation prompts of the held-out conversations: everything before the last answer.

    Prompts longer than ``max_length`` are skipped and counted; plain-text rows have none.
    """
    prompts = []
    for item, _ in evaluation:
        if isinstance(item.example, str):
            continue
        prompt_ids = template.encode_prompt(item.example[:-1])
        if len(prompt_ids) > max_length:
            report.eval_prompts_skipped += 1
            continue
        prompts.append(EvalPrompt(prompt_ids, item.example[-1]["content"]))
    return prompts


def to_dataset(pairs: list[tuple[Item, Encoded]]):
    """A ``datasets.Dataset`` with ``input_ids`` and ``completion_mask`` columns."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "input_ids": [enc.input_ids for _, enc in pairs],
            "completion_mask": [enc.train_mask for _, enc in pairs],
        }
    )
