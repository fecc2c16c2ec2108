"""Recipes: files of `dvc exp run` overrides (`-S key=value` per line, values in YAML), applied to params."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from lungseg.errors import UserError


class RecipeError(UserError, ValueError):
    """A recipe line that is not `-S key=value`, or that names a param params.yaml does not have."""


def apply(raw_params: dict, recipe: str | Path) -> dict:
    """A copy of the params mapping with the recipe's overrides applied the way `dvc exp run -S` applies them."""
    recipe = Path(recipe)
    result = copy.deepcopy(raw_params)
    for number, line in enumerate(recipe.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        flag, _, assignment = line.strip().partition(" ")
        key, equals, value = assignment.strip().partition("=")
        if flag != "-S" or not equals:
            raise RecipeError(f"{recipe}:{number}: expected `-S key=value`, got {line.strip()!r}")
        *parents, last = key.split(".")
        node = result
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise RecipeError(f"{recipe}:{number}: params.yaml has no section {key.rsplit('.', 1)[0]!r}")
            node = node[part]
        if last not in node:
            raise RecipeError(f"{recipe}:{number}: params.yaml has no param {key!r}")
        node[last] = yaml.safe_load(value)
    return result


def with_changes(raw_params: dict, changes: dict) -> dict:
    """A copy of the params mapping with nested `changes` written over it (a tiny config, a dry run)."""
    result = copy.deepcopy(raw_params)
    stack = [(result, changes)]
    while stack:
        target, update = stack.pop()
        for key, value in update.items():
            if isinstance(value, dict):
                stack.append((target[key], value))
            else:
                target[key] = value
    return result
