"""Human-readable views of recipes: the schema listing and a resolved recipe as YAML."""

from __future__ import annotations

import typing

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from finetune.recipe.errors import model_in
from finetune.recipe.schema import Recipe


def describe_schema(model: type[BaseModel] = Recipe, prefix: str = "") -> str:
    """Every key of the recipe with its type, default and description, section by section."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = model_in(field.annotation)
        if sub is not None:
            many = typing.get_origin(field.annotation) is list
            lines.append(f"\n{key}{'[]' if many else ''}:  {sub.__doc__.strip().splitlines()[0]}")
            lines.append(describe_schema(sub, f"{key}{'[]' if many else ''}."))
            continue
        default = "required" if field.default is PydanticUndefined and field.default_factory is None else (
            f"default {field.default_factory()!r}" if field.default_factory else f"default {field.default!r}"
        )
        lines.append(f"  {key}: {_type_name(field.annotation)} ({default})\n      {field.description or ''}")
    return "\n".join(lines).lstrip("\n")


def _type_name(annotation) -> str:
    text = repr(annotation).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")


def dump_recipe(recipe: Recipe) -> str:
    """The recipe with every default filled in, as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
