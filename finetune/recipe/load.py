"""Read a recipe: YAML file + ``--set key.path=value`` overrides → a validated :class:`Recipe`.

Every problem becomes a :class:`FinetuneError` that names the file, the dotted key and, where the
key came from the file, its line — all problems at once, so a user fixes a recipe in one pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune.errors import FinetuneError
from finetune.recipe.errors import describe_validation_error
from finetune.recipe.schema import Recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate the recipe at ``path``."""
    path = Path(path)
    raw, lines = read_yaml(path)
    for override in overrides or []:
        key, value = parse_override(override)
        apply_override(raw, key, value, override)
        lines[key] = f"--set {override}"  # the value now comes from the command line
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise FinetuneError(describe_validation_error(exc, path, lines)) from None
    if recipe.output.name is None:
        recipe.output.name = path.stem
    return recipe


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse ``path`` into a dict plus a map from dotted key to where it is written (``file line N``)."""
    if not path.is_file():
        hint = "Check the path; recipes that ship with mistral-ft are in recipes/."
        raise FinetuneError(f"Recipe file not found: {path}.", hint=hint)
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise FinetuneError(f"{path}:{where} is not valid YAML: {problem}.") from None
    if data is None:
        raise FinetuneError(f"Recipe {path} is empty: it needs at least the model: and data: sections.")
    if not isinstance(data, dict):
        raise FinetuneError(f"Recipe {path} must be a YAML mapping of sections (model:, data:, ...).")
    lines: dict[str, str] = {}
    _collect_lines(node, "", path.name, lines)
    return data, lines


def _collect_lines(node: yaml.Node, prefix: str, file: str, lines: dict[str, str]) -> None:
    """Record the line of every key (mappings) and item (sequences) under ``node``."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            lines[key] = f"{file} line {key_node.start_mark.line + 1}"
            _collect_lines(value_node, key, file, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix}.{i}"
            lines[key] = f"{file} line {item.start_mark.line + 1}"
            _collect_lines(item, key, file, lines)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value`` and parse the value as YAML (so 32 is an int and [a, b] a list)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p.strip() for p in parts):
        raise FinetuneError(
            f"Bad override {text!r}: use --set section.key=value, e.g. --set lora.r=32 or "
            "--set train.max_steps=200 (list items by index: --set data.sources.0.path=x.jsonl)."
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_override(raw: dict[str, Any], key: str, value: Any, original: str) -> None:
    """Set ``raw[key path] = value``, creating sections as needed; list items are addressed by index."""
    node: Any = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = _child(node, part, ".".join(parts[: depth + 1]), original)
        if child is None:
            child = {}
            node[part] = child
        node = child
    last = parts[-1]
    if isinstance(node, list):
        _child(node, last, key, original)  # validates the index
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise FinetuneError(f"Bad override {original!r}: {'.'.join(parts[:-1])} is a value, not a section.")


def _child(node: Any, part: str, path: str, original: str) -> Any:
    """The child ``part`` of a dict or list while walking an override path."""
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise FinetuneError(
                f"Bad override {original!r}: {path} must be an index below {len(node)} (the list has "
                f"{len(node)} item{'s' if len(node) != 1 else ''})."
            )
        return node[int(part)]
    raise FinetuneError(f"Bad override {original!r}: {path.rsplit('.', 1)[0]} is a value, not a section.")
