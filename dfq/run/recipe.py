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


SMALL_INPUT = 64  # at most this: the CIFAR recipe
CPU_INPUT = 128  # at least this, on a CPU: the CPU budget for ImageNet-size models


def recipe_choice(data_config: DataConfig, device: str = "cuda") -> dict[str, str]:
    """The shipped recipe for a model and a device, with the reason (recorded in report.json)."""
    side = max(data_config.input_size[1:])
    if side <= SMALL_INPUT:
        return {
            "recipe": "cifar",
            "reason": f"input {side} px <= {SMALL_INPUT}: small-image recipe",
        }
    if device == "cpu" and side >= CPU_INPUT:
        return {
            "recipe": "imagenet-cpu",
            "reason": f"input {side} px >= {CPU_INPUT} on a CPU: the CPU budget (low-resolution "
            "synthesis, cached teacher outputs); --recipe imagenet for the GPU one",
        }
    return {"recipe": "imagenet", "reason": f"input {side} px on {device}: the GPU recipe"}


def default_recipe(data_config: DataConfig, device: str = "cuda") -> str:
    """The shipped recipe for a model family, by input size and device."""
    return recipe_choice(data_config, device)["recipe"]


def check_sets(sets: Sets | None) -> None:
    """Refuse a `--set` item naming an unknown section or key, whichever section a command uses."""
    for section, values in (sets or {}).items():
        if section not in SECTIONS:
            raise DfqError(
                f"unknown section '{section}' in --set; "
                f"{suggestion(section, SECTIONS, 'known sections')}"
            )
        check_keys(SECTIONS[section], values, where=f"{section} (--set)")


def synth_config(
    recipe: str | Path | None,
    data_config: DataConfig,
    overrides: dict[str, Any] | None = None,
    sets: Sets | None = None,
    device: str = "cuda",
) -> SynthConfig:
    """The layered recipe's `synth:` section with every non-None override applied, validated."""
    check_sets(sets)
    return recipe_section(
        SynthConfig, "synth", recipe, overrides, default_recipe(data_config, device), sets
    )


def quant_config(
    recipe: str | Path | None,
    data_config: DataConfig,
    overrides: dict[str, Any] | None = None,
    sets: Sets | None = None,
    device: str = "cuda",
) -> QuantConfig:
    """The layered recipe's `quant:` section with every non-None override applied, validated."""
    check_sets(sets)
    return recipe_section(
        QuantConfig, "quant", recipe, overrides, default_recipe(data_config, device), sets
    )
