"""The tokenized-data cache: prepared once by ``mistral-ft preprocess`` (or the first ``train``), reused after.

The key is a SHA-256 over everything that decides the token ids and masks:

* the whole ``data:`` section (sources with their format, column mapping, filter, split, max_rows and
  system prompt; template; train_on; max_length and the overlong policy; on_bad_row; seed; hold-out),
  plus ``train.method`` and, for DPO, the ``dpo:`` length limits;
* the bytes of every local data file read (SHA-256 of the content, so one changed byte counts);
* the tokenizer: its class, vocabulary, special tokens and their ids, chat template, and the bytes of
  the SentencePiece model the prompt encoder uses.

Change any of them and the key changes, so a stale cache can never be read: there is nothing to
invalidate by hand.  Hub data sets cannot be fingerprinted without downloading them, so recipes that
use one are prepared afresh each time (and say so).  Entries live in ``<output.dir>/.data-cache/<key>``
and are written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Callable, TypeVar

from finetune.checksum import file_sha256
from finetune.data.sources import data_files, looks_local
from finetune.recipe.schema import Recipe

T = TypeVar("T")
VERSION = 1  # bump when the prepared data's layout changes


def cache_key(recipe: Recipe, tokenizer) -> str | None:
    """The key of the recipe's prepared data, or None when a source is a Hub data set."""
    sources = [*recipe.data.sources, *recipe.data.validation_sources]
    if not all(looks_local(s.path) for s in sources):
        return None
    files = {}
    for index, source in enumerate(sources):
        root = Path(source.path).expanduser()
        if not root.exists():
            return None  # preparing reports the missing path
        for file in data_files(root, source.split, f"source {index}"):
            files[str(file.resolve())] = file_sha256(file)
    described = {
        "version": VERSION,
        "method": recipe.train.method,
        "data": recipe.data.model_dump(mode="json"),
        "dpo": recipe.dpo.model_dump(mode="json") if recipe.train.method == "dpo" else None,
        "files": files,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what decides the ids: vocabulary, special tokens, chat template, SentencePiece model."""
    from finetune.data.text_encoder import sentencepiece_file

    digest = hashlib.sha256()
    parts = [
        type(tokenizer).__name__,
        sorted(tokenizer.get_vocab().items()),
        sorted(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)),
        [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        getattr(tokenizer, "chat_template", None),
        # the fast tokenizer's whole definition: merges, normalizer, pre-tokenizer
        tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else None,
    ]
    digest.update(json.dumps(parts, default=str).encode())
    model = sentencepiece_file(tokenizer)
    if model is not None:
        digest.update(model.read_bytes())
    return digest.hexdigest()


def cached(recipe: Recipe, tokenizer, build: Callable[[], T]) -> tuple[T, Path | None, str]:
    """(prepared data, its cache folder or None, a note for the report): from the cache, or built and stored."""
    key = cache_key(recipe, tokenizer)
    if key is None:
        return build(), None, "cache: off (a Hub data set is prepared afresh each run)"
    folder = Path(recipe.output.dir) / ".data-cache" / key[:24]
    blob = folder / "prepared.pkl"
    if blob.is_file():
        try:
            with open(blob, "rb") as f:
                return pickle.load(f), folder, f"cache: reused {folder}"
        except Exception as error:  # noqa: BLE001 - a damaged entry is rebuilt, never trusted
            note = f"cache: {blob} was unreadable ({type(error).__name__}); rebuilt"
    else:
        note = f"cache: written {folder}"
    data = build()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = blob.with_name(f"prepared.{os.getpid()}.tmp")  # two runs preparing at once never share it
    try:
        with open(tmp, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, blob)
    finally:
        tmp.unlink(missing_ok=True)
    return data, folder, note


