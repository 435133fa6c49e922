"""Reading a ``data.sources[i]`` entry into raw rows that remember where they came from.

A source is a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, a folder of such files,
or a Hugging Face Hub data set id.  Local files are read with the standard library (and pyarrow for
parquet) rather than ``datasets.load_dataset``: that keeps exact 1-based line numbers for error
messages, turns a malformed line into an error naming it, and writes no cache that could go stale.
Every :class:`RawRow` carries ``where`` ("data/train.jsonl line 7") for the error messages; a line
that is not a JSON object is a row with a ``problem``, not an exception, so every bad row of a file
can be reported at once.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_SPLIT_NAMES = ("train", "validation", "valid", "val", "test", "dev", "eval")


@dataclass(frozen=True)
class RawRow:
    """One row as read, and where it is: ``"<file> line 7"`` or ``"<file> row 3"`` (0-based).

    A row that could not be read as an object has ``problem`` (why) and its raw ``text`` instead of
    ``data``; what happens to it is ``data.on_bad_row``'s decision (:mod:`finetune.data.bad_rows`).
    """

    data: dict[str, Any] | None
    where: str
    problem: str | None = None
    text: str | None = None


def looks_local(path: str) -> bool:
    """Whether ``path`` is meant as a local file or folder rather than a Hub data set id."""
    return (
        Path(path).expanduser().exists()
        or path.startswith((".", "/", "~"))
        or path.lower().endswith(SUFFIXES)
        or path.count("/") > 1
        or "\\" in path
    )


def read_rows(path: str, split: str, key: str) -> Iterator[RawRow]:
    """Rows of the source at ``path`` (``key`` names the recipe entry, e.g. ``data.sources[0]``)."""
    if not looks_local(path):
        yield from _read_hub(path, split, key)
        return
    local = Path(path).expanduser()
    if not local.exists():
        raise FinetuneError(
            f"{key}.path: {path} does not exist (resolved to {local.resolve()}).",
            hint="Relative paths are resolved from the current directory; fix the path or create the file.",
        )
    for file in data_files(local, split, key):
        yield from read_file(file)


def data_files(path: Path, split: str, key: str) -> list[Path]:
    """The files to read for ``split``: the file itself, or the folder's ``<split>`` files.

    In a folder, files named after a split (``train.jsonl``, ``train-00000-of-00002.parquet``,
    ``train/part1.jsonl``) are chosen by ``split``; a folder without split names is read whole.
    """
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise FinetuneError(
                f"{key}.path: {path} is a {path.suffix or 'suffix-less'} file; "
                f"supported files are {', '.join(SUFFIXES)}."
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise FinetuneError(f"{key}.path: folder {path} holds no {', '.join(SUFFIXES)} files.")
    by_split = {name: [f for f in files if _split_of(f, path) == name] for name in _SPLIT_NAMES}
    present = [name for name, found in by_split.items() if found]
    if not present:
        return files
    chosen = [f for f in files if _split_of(f, path) == split] if split not in by_split else by_split[split]
    if not chosen:
        raise FinetuneError(
            f"{key}: folder {path} has files for the splits {', '.join(present)} but none for "
            f"split {split!r}.",
            hint=f"Set `split:` to one of {', '.join(present)} or add {split}.jsonl to the folder.",
        )
    return chosen


def _split_of(file: Path, root: Path) -> str:
    """The split a file belongs to: its name before the first ``-`` / ``.``, or its top folder."""
    relative = file.relative_to(root)
    first = relative.parts[0] if len(relative.parts) > 1 else file.name
    return re.split(r"[-.]", first, maxsplit=1)[0].lower()


def read_file(path: Path) -> Iterator[RawRow]:
    """Rows of one local file, by suffix."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
        return
    try:
        if suffix == ".jsonl":
            yield from _read_jsonl(path)
        elif suffix == ".json":
            yield from _read_json(path)
        else:
            yield from _read_csv(path)
    except UnicodeDecodeError as err:
        raise FinetuneError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}).") from err


def _row(value: Any, where: str, text: str) -> RawRow:
    """A parsed JSON value as a row: an object, or a row with a problem."""
    if isinstance(value, dict):
        return RawRow(value, where)
    return RawRow(None, where, f"a JSON {type(value).__name__}, not an object such as "
                  '{"prompt": ..., "response": ...}', text)


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    """JSON Lines: one object per line, blank lines skipped, positions are 1-based line numbers."""
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where, text = f"{path} line {number}", line.rstrip("\r\n")
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                yield RawRow(None, where, f"not valid JSON: {err.msg} (column {err.colno})", text)
                continue
            yield _row(value, where, text)


def _read_json(path: Path) -> Iterator[RawRow]:
    """A JSON array of objects (row = 0-based index); JSON Lines saved as ``.json`` also works."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":
            yield from _read_jsonl(path)
            return
        raise FinetuneError(f"{path} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno}).") from err
    if not isinstance(value, list):
        raise FinetuneError(
            f"{path} holds a JSON {type(value).__name__}; expected a list of row objects "
            "(or one object per line, JSON Lines)."
        )
    for index, item in enumerate(value):
        yield _row(item, f"{path} row {index}", json.dumps(item, ensure_ascii=False))


def _read_csv(path: Path) -> Iterator[RawRow]:
    """CSV with a header line; positions are the 1-based line where the record starts."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        start = reader.line_num + 2  # header is line 1 once read
        for record in reader:
            where = f"{path} line {start}"
            if None in record:
                extra = record.pop(None)
                text = ",".join([*map(str, record.values()), *extra])
                yield RawRow(None, where, "more fields than the header line", text)
            else:
                yield RawRow(dict(record), where)
            start = reader.line_num + 1


def _read_parquet(path: Path) -> Iterator[RawRow]:
    """Parquet, batch by batch; positions are 0-based row indices."""
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            yield RawRow(record, f"{path} row {index}")
            index += 1


def _read_hub(dataset_id: str, split: str, key: str) -> Iterator[RawRow]:
    """Rows of a Hub data set split (or of its local ``datasets`` cache when offline)."""
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id, split=split)
    except ConnectionError as err:
        raise FinetuneError(
            f"{key}.path: {dataset_id} is not a local file or folder, and the Hub data set {dataset_id} "
            f"could not be fetched: no network, or HF_HUB_OFFLINE=1 ({err}).",
            hint="Download it first on a machine with network (it is then read from the cache), or point "
            "`path` at a local copy (.jsonl, .json, .csv, .parquet or a folder of them).",
        ) from err
    except FileNotFoundError as err:
        raise FinetuneError(
            f"{key}.path: {dataset_id} is neither a local file or folder nor a Hub data set ({err}).",
            hint="Check the spelling, or log in with `hf auth login` if the data set is private or gated.",
        ) from err
    except ValueError as err:
        if "split" not in str(err).lower():
            raise
        raise FinetuneError(f"{key}.split: the Hub data set {dataset_id} has no split {split!r} ({err}).") from err
    for index, record in enumerate(loaded):
        yield RawRow(record, f"{dataset_id} [{split}] row {index}")
