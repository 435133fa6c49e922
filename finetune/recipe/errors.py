"""Turn pydantic's validation errors into messages a recipe author can act on.

Each problem becomes one line: ``file:line key: what is wrong; what is allowed``.  Unknown keys get
a did-you-mean suggestion drawn from the keys (and aliases) that the section accepts.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

from finetune.recipe.schema import Recipe


def describe_validation_error(exc: ValidationError, path: Path, lines: dict[str, str]) -> str:
    """One paragraph listing every problem pydantic found in the recipe at ``path``."""
    problems = [_describe(err, path, lines) for err in exc.errors()]
    count = f"{len(problems)} problems" if len(problems) > 1 else "a problem"
    body = " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)) if len(problems) > 1 else problems[0]
    return f"Recipe {path} has {count}: {body} Run `mistral-ft recipe schema` for every key and its meaning."


def _describe(err: dict, path: Path, lines: dict[str, str]) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    where = _where(path, key, lines)
    if err["type"] == "extra_forbidden":
        return f"{where}unknown key `{key}`.{_suggest(loc)}"
    if err["type"] == "missing":
        return f"{where}`{key}` is required but missing.{_field_doc(loc)}"
    got = err.get("input")
    got_text = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    return f"{where}`{key}`: {err['msg']}{got_text}."


def _where(path: Path, key: str, lines: dict[str, str]) -> str:
    """``file line N: `` (or ``--set k=v: ``) for the key itself or its nearest written parent."""
    probe = key
    while probe:
        if probe in lines:
            return f"{lines[probe]}: "
        probe = probe.rpartition(".")[0]
    return ""


def _suggest(loc: list[str]) -> str:
    """A did-you-mean for an unknown key, plus the keys its section allows."""
    section = model_at(loc[:-1])
    if section is None:
        return ""
    allowed = allowed_keys(section)
    typo = loc[-1]
    close = difflib.get_close_matches(typo, allowed, n=3, cutoff=0.5)
    close += [k for k in allowed if sorted(k) == sorted(typo) and k not in close]  # transpositions
    prefix = ".".join(loc[:-1])
    named = lambda k: f"`{prefix}.{k}`" if prefix else f"`{k}`"  # noqa: E731
    hint = f" Did you mean {' or '.join(named(k) for k in close)}?" if close else ""
    where = f"`{prefix}`" if prefix else "the top level"
    return f"{hint} Keys allowed in {where}: {', '.join(allowed)}."


def _field_doc(loc: list[str]) -> str:
    section = model_at(loc[:-1])
    field = section.model_fields.get(loc[-1]) if section else None
    return f" ({field.description})" if field and field.description else ""


def allowed_keys(model: type[BaseModel]) -> list[str]:
    """Field names of ``model`` plus their aliases, in declaration order."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        keys.append(name)
        alias = field.validation_alias
        for choice in getattr(alias, "choices", []):
            if isinstance(choice, str) and choice not in keys:
                keys.append(choice)
    return keys


def model_at(loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model that describes the recipe node at ``loc`` (list indices skipped)."""
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if part.isdigit():
            continue
        if model is None or part not in model.model_fields:
            return None
        model = model_in(model.model_fields[part].annotation)
    return model


def model_in(annotation) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as ``X``, ``list[X]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None
