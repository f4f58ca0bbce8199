"""Recipes: which shipped recipe a model gets, and the configs resolved from it plus CLI options.

Layers, later ones winning: the shipped recipe for the model (`default_recipe`), the user's recipe
file, `--set section.key=value` items, then the command's own options (`--iters`, `--bits`, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dfq.config import check_keys, recipe_section, suggestion
from dfq.errors import DfqError
from dfq.models.data_config import DataConfig
from dfq.quant.quant_config import QuantConfig
from dfq.synth.synth_config import SynthConfig

# The recipe sections `--set` may change, with the dataclass that checks their keys.
SECTIONS: dict[str, type] = {"synth": SynthConfig, "quant": QuantConfig}

Sets = dict[str, dict[str, Any]]


def default_recipe(data_config: DataConfig) -> str:
    """The shipped recipe for a model family, chosen by input size (small inputs: CIFAR)."""
    return "cifar" if max(data_config.input_size[1:]) <= 64 else "imagenet"


def check_sets(sets: Sets | None) -> None:
    """Refuse a `--set` item naming an unknown section or key, whichever section a command uses."""
    for section, values in (sets or {}).items():
        if section not in SECTIONS:
            raise DfqError(f"unknown section '{section}' in --set; "
                           f"{suggestion(section, SECTIONS, 'known sections')}")
        check_keys(SECTIONS[section], values, where=f"{section} (--set)")


def synth_config(recipe: str | Path | None, data_config: DataConfig,
                 overrides: dict[str, Any] | None = None, sets: Sets | None = None) -> SynthConfig:
    """The layered recipe's `synth:` section with every non-None override applied, validated."""
    check_sets(sets)
    return recipe_section(SynthConfig, "synth", recipe, overrides, default_recipe(data_config),
                          sets)


def quant_config(recipe: str | Path | None, data_config: DataConfig,
                 overrides: dict[str, Any] | None = None, sets: Sets | None = None) -> QuantConfig:
    """The layered recipe's `quant:` section with every non-None override applied, validated."""
    check_sets(sets)
    return recipe_section(QuantConfig, "quant", recipe, overrides, default_recipe(data_config),
                          sets)
