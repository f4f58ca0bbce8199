"""Recipes: which shipped recipe a model gets, and the configs resolved from it plus CLI options."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dfq.config import recipe_section
from dfq.models.data_config import DataConfig
from dfq.quant.quant_config import QuantConfig
from dfq.synth.synth_config import SynthConfig


def default_recipe(data_config: DataConfig) -> str:
    """The shipped recipe for a model family, chosen by input size (small inputs: CIFAR)."""
    return "cifar" if max(data_config.input_size[1:]) <= 64 else "imagenet"


def synth_config(recipe: str | Path | None, data_config: DataConfig,
                 overrides: dict[str, Any] | None = None) -> SynthConfig:
    """The recipe's `synth:` section with every non-None override applied, validated."""
    return recipe_section(SynthConfig, "synth", recipe or default_recipe(data_config), overrides)


def quant_config(recipe: str | Path | None, data_config: DataConfig,
                 overrides: dict[str, Any] | None = None) -> QuantConfig:
    """The recipe's `quant:` section with every non-None override applied, validated."""
    return recipe_section(QuantConfig, "quant", recipe or default_recipe(data_config), overrides)
