"""``prepare_preferences``: preference sources -> token ids of (prompt, chosen, rejected) for DPO.

The same path as :func:`~finetune.data.prepare.prepare_data` (load and shuffle the sources, hold out
rows, count everything in a report), ending in the three columns TRL's ``DataCollatorForPreference``
reads: ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids``.

The ids come from the project's template, never from re-tokenizing rendered text: the prompt is
``template.encode_prompt(conversation)`` (``<s>[INST] … [/INST]``, token-exact with mistral-common for
the Mistral template) and each answer is the rest of ``template.encode(conversation + answer)``
(answer tokens + ``</s>``), so prompt + answer is exactly what SFT on the same conversation would
train on.  ``data.overlong`` applies to each pair: to prompt + the longer answer against
``data.max_length``, and to the prompt and answers against ``dpo.max_prompt_length`` /
``dpo.max_completion_length``.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune.data.conversation import PreferencePair
from finetune.data.examples import Item
from finetune.data.bad_rows import RejectedRows
from finetune.data.prepare import split_items
from finetune.data.report import NOTHING_TRAINED, OVERLONG, DataReport
from finetune.data.template import Template, select_template
from finetune.data.text_encoder import text_encoder
from finetune.errors import FinetuneError
from finetune.recipe.schema import DataConfig, DpoConfig

IDENTICAL_AFTER_CUT = "truncation left chosen == rejected"
_SHOWN = 5


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one preference pair: the prompt, and each answer without the prompt."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def longest(self) -> int:
        """Tokens of the longer side (prompt + answer): what data.max_length bounds."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def forward_tokens(self) -> int:
        """Tokens the model reads for this pair per pass (the prompt once per side)."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def encode_pair(template: Template, pair: PreferencePair) -> EncodedPair:
    """The pair's ids, cut from the template's encoding of each full conversation (module docstring)."""
    prompt_ids = template.encode_prompt(pair.prompt)
    answers = []
    for answer in (pair.chosen, pair.rejected):
        full = template.encode([*pair.prompt, {"role": "assistant", "content": answer}]).input_ids
        if full[: len(prompt_ids)] != prompt_ids:
            raise FinetuneError(
                f"The {template.name} template encodes the prompt differently with and without an answer after "
                "it, so the answer's tokens cannot be separated from the prompt's.",
                hint="Set `data.template: mistral` (the built-in Mistral format, token-exact with mistral-common).",
            )
        answers.append(full[len(prompt_ids) :])
    return EncodedPair(prompt_ids, *answers)


class PreferenceReport(DataReport):
    """The data report, worded for pairs: rows are pairs, trained tokens are the scored answers."""

    def summary(self) -> str:
        lines = [
            f"data: template {self.template} ({self.encoder}), max_length {self.max_length}, "
            f"overlong pairs: {self.overlong}"
        ]
        lines += [f"  {source.line()}" for source in self.sources]
        share = f" ({self.trained_tokens / self.train_tokens:.0%} of them answer tokens)" if self.train_tokens else ""
        lines.append(f"  train: {self.train_rows:,} pairs, {self.train_tokens:,} tokens per epoch{share}")
        lines.append(f"  eval: {self.eval_rows:,} pairs ({self.eval_origin})")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class PreferenceData:
    """What DPO training and the preference evaluation consume (``eval`` is None when nothing is held out)."""

    train: "datasets.Dataset"  # noqa: F821
    eval: "datasets.Dataset | None"  # noqa: F821
    report: PreferenceReport
    template: Template
    rejected: RejectedRows


def prepare_preferences(data: DataConfig, dpo: DpoConfig, tokenizer) -> PreferenceData:
    """Read, split, encode and fit the preference pairs described by ``data`` (module docstring)."""
    encode_text = text_encoder(tokenizer)
    template = select_template(tokenizer, data.template, encode_text)
    report = PreferenceReport(template.name, encode_text.kind, data.max_length, data.overlong)

    rejected = RejectedRows(data.on_bad_row)
    train_items, eval_items = split_items(data, report, "pairs", rejected)

    fitter = PairFitter(data, dpo, rejected)
    train = fitter.encode_all(template, train_items)
    evaluation = fitter.encode_all(template, eval_items)
    rejected.raise_if_bad()
    fitter.raise_if_overlong()
    if not train:
        raise FinetuneError(
            f"No training pairs are left: data.overlong = {data.overlong} dropped every one of the "
            f"{len(train_items):,} training pairs (data.max_length = {data.max_length:,}).",
            hint="Raise data.max_length (or dpo.max_prompt_length / dpo.max_completion_length), or set "
            "`data.overlong: truncate`.",
        )
    if eval_items and not evaluation:
        report.notes.append("every held-out pair was dropped by data.overlong: no held-out evaluation")
    report.train_rows, report.eval_rows = len(train), len(evaluation)
    report.train_tokens = sum(pair.forward_tokens for pair in train)
    report.trained_tokens = sum(len(pair.chosen_ids) + len(pair.rejected_ids) for pair in train)
    evaluation_set = to_pair_dataset(evaluation) if evaluation else None
    return PreferenceData(to_pair_dataset(train), evaluation_set, report, template, rejected)


class PairFitter:
    """Encodes pairs and applies ``data.overlong`` with the DPO length limits, counting every outcome."""

    def __init__(self, data: DataConfig, dpo: DpoConfig, rejected: RejectedRows):
        self.rejected = rejected
        self.overlong_policy = data.overlong
        self.max_length = data.max_length
        self.max_prompt = min(dpo.max_prompt_length or data.max_length, data.max_length - 1)  # room for an answer
        self.max_answer = dpo.max_completion_length or data.max_length
        self.overlong: list[tuple[Item, str]] = []

    def too_long(self, pair: EncodedPair) -> str | None:
        """Which limit the pair breaks, worded for the error message, or None."""
        if len(pair.prompt_ids) > self.max_prompt and self.max_prompt < self.max_length - 1:
            return f"prompt {len(pair.prompt_ids):,} tokens > dpo.max_prompt_length {self.max_prompt:,}"
        answer = max(len(pair.chosen_ids), len(pair.rejected_ids))
        if answer > self.max_answer:
            return f"answer {answer:,} tokens > dpo.max_completion_length {self.max_answer:,}"
        if pair.longest > self.max_length:
            return f"prompt + answer {pair.longest:,} tokens > data.max_length {self.max_length:,}"
        return None

    def truncate(self, pair: EncodedPair) -> EncodedPair:
        """Keep BOS and the end of the prompt (where the question and [/INST] are), then cut the answers."""
        prompt = pair.prompt_ids
        if len(prompt) > self.max_prompt:
            prompt = [prompt[0], *prompt[len(prompt) - self.max_prompt + 1 :]]
        room = min(self.max_answer, self.max_length - len(prompt))
        return EncodedPair(prompt, pair.chosen_ids[:room], pair.rejected_ids[:room])

    def fit(self, item: Item, pair: EncodedPair) -> EncodedPair | None:
        """The pair to keep under ``data.overlong``, or None (counted in the item's source report)."""
        problem = self.too_long(pair)
        if problem is None:
            return pair
        if self.overlong_policy == "error":
            self.overlong.append((item, problem))
            return None
        if self.overlong_policy == "drop":
            self.rejected.item_dropped(item, OVERLONG, f"{problem} (data.overlong: drop)")
            return None
        cut = self.truncate(pair)
        if not cut.chosen_ids or not cut.rejected_ids:
            self.rejected.item_dropped(item, NOTHING_TRAINED, f"{problem}; truncating left an empty answer")
            return None
        if cut.chosen_ids == cut.rejected_ids:
            self.rejected.item_dropped(item, IDENTICAL_AFTER_CUT, f"{problem}; truncating left identical answers")
            return None
        item.report.truncated += 1
        return cut

    def encode_all(self, template: Template, items: list[Item]) -> list[EncodedPair]:
        """The kept pairs of ``items``, in order; pairs the template cannot render become bad rows."""
        kept = []
        for item in items:
            try:
                encoded = encode_pair(template, item.example)
            except FinetuneError as err:
                self.rejected.item_failed(item, err)
                continue
            fitted = self.fit(item, encoded)
            if fitted is not None:
                item.report.kept += 1
                kept.append(fitted)
        return kept

    def raise_if_overlong(self) -> None:
        """Under ``overlong: error``, one error listing the first offending pairs and the options."""
        if not self.overlong:
            return
        ordered = sorted(self.overlong, key=lambda pair: (pair[0].report.key, pair[0].order))
        shown = "; ".join(f"{item.report.key} {item.where} ({problem})" for item, problem in ordered[:_SHOWN])
        more = f" and {len(ordered) - _SHOWN:,} more" if len(ordered) > _SHOWN else ""
        raise FinetuneError(
            f"{len(ordered):,} preference pairs are too long: {shown}{more}.",
            hint="Choose one: `data.overlong: truncate` (keep BOS and the end of the prompt, cut the answers), "
            "`data.overlong: drop` (skip those pairs), or raise data.max_length / dpo.max_prompt_length / "
            "dpo.max_completion_length. Each choice is counted in the data report.",
        )


def to_pair_dataset(pairs: list[EncodedPair]):
    """A ``datasets.Dataset`` with the columns TRL's DataCollatorForPreference reads."""
    import datasets

    return datasets.Dataset.from_dict(
        {
            "prompt_input_ids": [p.prompt_ids for p in pairs],
            "chosen_input_ids": [p.chosen_ids for p in pairs],
            "rejected_input_ids": [p.rejected_ids for p in pairs],
        }
    )
