"""Resolve a SynthConfig from a recipe plus CLI overrides (the recipe is data; options win)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dfq.config import recipe_section
from dfq.models.data_config import DataConfig
from dfq.synth.config import SynthConfig


def default_recipe(data_config: DataConfig) -> str:
    """The shipped recipe for a model family, chosen by input size (small inputs: CIFAR)."""
    return "cifar" if max(data_config.input_size[1:]) <= 64 else "imagenet"


def synth_config(recipe: str | Path | None, data_config: DataConfig,
                 overrides: dict[str, Any] | None = None) -> SynthConfig:
    """The recipe's `synth:` section with every non-None override applied, validated."""
    return recipe_section(SynthConfig, "synth", recipe or default_recipe(data_config), overrides)
