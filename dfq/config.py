"""Config dataclasses as data: build from dicts / YAML recipes with unknown keys refused helpfully.

Every stage has a small dataclass that validates itself in `__post_init__`; a recipe is a YAML file whose
top-level sections (`synth:`, `quant:`, ...) map one to one onto those dataclasses. `from_dict` refuses
keys it does not know, naming the closest known one, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dfq.errors import DfqError

C = TypeVar("C")

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


def config_from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass `cls` from `data`; unknown keys raise a DfqError with a suggestion."""
    data = dict(data or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(fields))}"
            raise DfqError(f"unknown key '{key}'{f' in {where}' if where else ''}; {hint}")
    for f in dataclasses.fields(cls):  # nested sections (e.g. synth.dfad) get the same checks
        if isinstance(data.get(f.name), dict) and f.default_factory is not dataclasses.MISSING:
            proto = f.default_factory()
            if dataclasses.is_dataclass(proto):
                inner = f"{where}.{f.name}" if where else f.name
                data[f.name] = config_from_dict(type(proto), data[f.name], inner)
    try:
        return cls(**data)
    except TypeError as e:
        raise DfqError(f"bad value{f' in {where}' if where else ''}: {e}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (tuples as lists) that YAML and JSON can hold and `config_from_dict` reads back."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of one shipped in `recipes/` (with or without `.yaml`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPE_DIR / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in RECIPE_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(str(name_or_path), names, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"shipped recipes: {', '.join(names) or 'none'}"
    raise DfqError(f"recipe '{name_or_path}' not found; {hint}")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Read a recipe into a dict of sections; each section is later fed to `config_from_dict`."""
    path = find_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DfqError(f"recipe {path} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise DfqError(f"recipe {path} must be a mapping of sections (synth:, quant:, ...)")
    return data


def recipe_section(cls: type[C], section: str, recipe: str | Path,
                   overrides: dict[str, Any] | None = None) -> C:
    """Section `section` of `recipe` as dataclass `cls`, with every non-None override applied."""
    values = dict(load_recipe(recipe).get(section) or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, values, where=section)
