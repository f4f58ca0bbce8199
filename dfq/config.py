"""Config dataclasses as data: build from dicts / YAML recipes with unknown keys refused helpfully.

Every stage has a small dataclass that validates itself in `__post_init__`; a recipe is a YAML file
whose top-level sections (`synth:`, `quant:`, ...) map one to one onto those dataclasses.
`from_dict` refuses keys it does not know, naming the closest known one, so a typo never silently
falls back to a default. A user's recipe file is layered over the shipped one (`layered_recipe`): it
names what it changes.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dfq.errors import DfqError

C = TypeVar("C")

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that `1e-5` is a float (1.1 wants `1.0e-5`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """Recipe files, `--set` values and the benchmarks' `--quant` values: YAML with `1e-5` a
    number."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects


def check_keys(cls: type, keys: Iterable[str], where: str = "") -> None:
    """Refuse a key `cls` has no field for, naming the closest one: typos never pass silently."""
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in keys:
        if key not in fields:
            raise DfqError(
                f"unknown key '{key}'{f' in {where}' if where else ''}; "
                f"{suggestion(key, fields, 'known keys')}"
            )


def config_from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass `cls` from `data`; unknown keys raise a DfqError with a suggestion."""
    data = dict(data or {})
    check_keys(cls, data, where)
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
    """A plain dict (tuples as lists) that YAML and JSON can hold and `config_from_dict` reads
    back."""

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
    hint = suggestion(str(name_or_path), names, "shipped recipes")
    raise DfqError(f"recipe '{name_or_path}' not found; {hint}")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Read a recipe into a dict of sections; each section is later fed to `config_from_dict`."""
    path = find_recipe(name_or_path)
    try:
        data = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DfqError(f"recipe {path} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise DfqError(f"recipe {path} must be a mapping of sections (synth:, quant:, ...)")
    return data


def is_shipped(name_or_path: str | Path) -> bool:
    """Whether a recipe is one of dfq's own (by name or by its path in `recipes/`)."""
    return find_recipe(name_or_path).resolve().parent == RECIPE_DIR


def layered_recipe(
    recipe: str | Path | None,
    base: str | Path | None = None,
    sets: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Sections of `base`, then the user's `recipe` file over them key by key, then `sets`.

    A partial recipe file thus changes only what it names and keeps the shipped recipe for the rest;
    a shipped recipe given as `recipe` replaces `base`. Sections unknown to the base are refused.
    """
    if recipe is not None and (base is None or is_shipped(recipe)):
        base, recipe = recipe, None
    out = {k: dict(v or {}) for k, v in (load_recipe(base) if base is not None else {}).items()}
    known = set(out)
    layers = [(str(recipe), load_recipe(recipe))] if recipe is not None else []
    for where, layer in [*layers, ("--set", sets or {})]:
        for section, values in layer.items():
            if known and section not in known:
                raise DfqError(
                    f"unknown section '{section}' in {where}; "
                    f"{suggestion(section, known, 'known sections')}"
                )
            if values is not None and not isinstance(values, dict):
                raise DfqError(f"section '{section}' in {where} must map keys to values")
            _merge(out.setdefault(section, {}), values or {})
    return out


def _merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    """Key by key; a nested section (e.g. `synth.dfad`) is merged, not replaced."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        else:
            into[key] = value


def recipe_section(
    cls: type[C],
    section: str,
    recipe: str | Path | None,
    overrides: dict[str, Any] | None = None,
    base: str | Path | None = None,
    sets: dict[str, dict[str, Any]] | None = None,
) -> C:
    """Section `section` of the layered recipe as dataclass `cls`, with non-None overrides applied.

    The overrides are the command's own options (`--iters`, `--bits`): they win over every layer.
    """
    values = dict(layered_recipe(recipe, base, sets).get(section) or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, values, where=section)


def suggestion(name: str, known: Iterable[str], what: str) -> str:
    """'did you mean X?' for the closest of `known`, else the list of them (`what: a, b`)."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"{what}: {', '.join(known) or 'none'}"
