"""Model loading: names, checkpoints and preprocessing."""

from __future__ import annotations

from dfq.models.data_config import DataConfig
from dfq.models.loader import list_models, load_model, resolve_name

__all__ = ["DataConfig", "list_models", "load_model", "resolve_name"]
