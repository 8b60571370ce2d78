"""Recipes: the bundled YAML files, reading a recipe, ``--set`` overrides, and building llmcompressor's
``Recipe`` (where every modifier validates its fields, so a typo fails before any model is loaded)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field

from sau_compress.errors import InputNotFoundError, UserError

__all__ = [
    "SAU_MODIFIER",
    "apply_overrides",
    "check_field_ranges",
    "known_modifiers",
    "list_recipes",
    "load_recipe",
    "modifier_entries",
    "parse_overrides",
    "read_recipe",
    "resolve_recipe",
    "validation_problems",
]

#: The class name recipes use for SAU; ``--set key=value`` without a class prefix addresses it.
SAU_MODIFIER = "SparsityAwareUnlearningModifier"
RECIPES_PACKAGE = "sau_compress.recipes"


# ---------------------------------------------------------------------------------------------- recipes


def _bundled() -> dict[str, Any]:
    folder = resources.files(RECIPES_PACKAGE)
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def list_recipes() -> list[dict[str, str]]:
    """The bundled recipes, sorted by name.

    :return: ``[{"name", "description", "path"}]``; the description is the file's first ``#`` line
    """
    out = []
    for name, path in sorted(_bundled().items()):
        first = path.read_text(encoding="utf-8").splitlines()[0] if path.read_text(encoding="utf-8") else ""
        out.append({"name": name, "description": first.lstrip("#").strip(), "path": str(path)})
    return out


def resolve_recipe(name_or_path: str | os.PathLike[str]) -> Path:
    """A bundled recipe name (``sparsegpt-2of4-sau-graddiff``, ``.yaml`` optional) or a recipe file path.

    :raises InputNotFoundError: neither a bundled name nor an existing file (the error lists the names)
    """
    text = str(name_or_path)
    bundled = _bundled()
    key = text.removesuffix(".yaml")
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if key in bundled:
        return Path(str(bundled[key]))
    raise InputNotFoundError(
        f"recipe '{text}' is neither a file nor a bundled recipe; bundled: {sorted(bundled)}"
    )


def read_recipe(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a recipe file (YAML or JSON) into llmcompressor's nested dict (stages -> groups -> modifiers)."""
    path = resolve_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or not any(k.endswith("_stage") for k in data):
        raise UserError(
            f"recipe {path}: expected a mapping of '<name>_stage' entries (llmcompressor's schema)"
        )
    return data


def modifier_entries(recipe: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(class name, args dict)`` of every modifier, in recipe order (the dicts are the recipe's own)."""
    out = []
    for stage_key, stage in recipe.items():
        if not (stage_key.endswith("_stage") and isinstance(stage, dict)):
            continue
        for group_key, group in stage.items():
            if not (group_key.endswith("_modifiers") and isinstance(group, dict)):
                continue
            for mod_type in list(group):
                if group[mod_type] is None:
                    group[mod_type] = {}
                out.append((mod_type, group[mod_type]))
    return out


def parse_overrides(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Parse ``--set`` entries: ``key=value`` (a field of the SAU modifier) or ``Class.key=value``.

    Values are read as YAML scalars/lists (``20`` -> int, ``1e-4`` stays a string that pydantic reads as a
    float, ``[a, b]`` -> list, ``null`` -> None).

    :return: ``{modifier class name: {field: value}}``
    :raises UserError: an entry without ``=`` or with an empty key
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(
                f"--set expects key=value (e.g. max_steps=20 or SparseGPTModifier.sparsity=0.6), got {item!r}"
            )
        cls, dot, field = key.rpartition(".")
        cls = cls if dot else SAU_MODIFIER
        if not field:
            raise UserError(f"--set entry {item!r} has an empty field name")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.setdefault(cls, {})[field] = value
    return out


def validation_problems(err: Any) -> str:
    """A pydantic ``ValidationError`` as one line: ``field: message; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
    )


def apply_overrides(recipe: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Set fields of the recipe's modifiers in place (validation happens when the recipe is built).

    :param recipe: the dict from :func:`read_recipe`
    :param overrides: ``{class name: {field: value}}`` (see :func:`parse_overrides`)
    :return: ``recipe``
    :raises UserError: an override names a modifier the recipe does not have
    """
    entries = modifier_entries(recipe)
    for cls, fields in overrides.items():
        targets = [args for name, args in entries if name == cls]
        if not targets:
            have = [name for name, _ in entries]
            raise UserError(f"the recipe has no {cls} to set {sorted(fields)} on; its modifiers: {have}")
        for args in targets:
            args.update(fields)
    return recipe


def load_recipe(recipe: Mapping[str, Any]) -> Any:
    """Build llmcompressor's ``Recipe`` from a recipe dict; modifiers validate here (a typo names the field).

    :return: ``llmcompressor.recipe.Recipe`` with fresh modifier instances
    :raises UserError: a modifier rejects a field (unknown name, bad value) or the recipe names an unknown
        modifier; the message names them
    """
    from llmcompressor.recipe import Recipe
    from pydantic import ValidationError

    import sau_compress.modifier  # noqa: F401 - registers SparsityAwareUnlearningModifier

    try:
        built = Recipe.from_dict(dict(recipe))
    except ValidationError as err:
        raise UserError(f"recipe rejected by {err.title}: {validation_problems(err)}") from err
    except ValueError as err:  # llmcompressor's factory: a modifier name it does not know
        raise UserError(f"recipe rejected: {err} Known modifiers: {', '.join(known_modifiers())}") from err
    for modifier in built.modifiers:
        check_field_ranges(modifier)
    return built


def known_modifiers() -> list[str]:
    """The modifier class names a recipe may use (llmcompressor's and ours), sorted."""
    from llmcompressor.modifiers import ModifierFactory

    if not ModifierFactory._loaded:
        ModifierFactory.refresh()
    names = set(ModifierFactory._main_registry) | set(ModifierFactory._experimental_registry)
    return sorted(names | set(ModifierFactory._registered_registry))


_Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
#: valid ranges of fields that llmcompressor's modifiers declare without one (their pydantic models check the
#: type only: ``SparseGPTModifier(sparsity=1.5)`` is accepted and fails, or prunes everything, much later)
FIELD_RANGES: dict[str, Any] = {
    "sparsity": _Fraction | list[_Fraction] | dict[str, _Fraction] | None,
}


def check_field_ranges(modifier: Any) -> None:
    """Check a built modifier's fields against :data:`FIELD_RANGES`, through pydantic like its own fields.

    :raises UserError: a value out of range (the message names the modifier, the field and the range)
    """
    from pydantic import TypeAdapter, ValidationError

    for field, annotation in FIELD_RANGES.items():
        if field not in type(modifier).model_fields:
            continue
        try:
            TypeAdapter(annotation).validate_python(getattr(modifier, field))
        except ValidationError as err:
            raise UserError(
                f"recipe rejected: {type(modifier).__name__}.{field} = {getattr(modifier, field)!r} is out of range: "
                f"a fraction of the weights, 0 <= {field} < 1 (each value, for a list or a mapping)"
            ) from err
