"""dfq: data-free post-training quantization of image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from dfq.errors import DfqError, DfqFailure  # noqa: E402
from dfq.models import DataConfig, load_model  # noqa: E402

__all__ = ["DataConfig", "DfqError", "DfqFailure", "load_model", "__version__"]
