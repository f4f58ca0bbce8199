"""Image data: real images for evaluation and calibration."""

from __future__ import annotations

from dfq.data.images import ImageSet, load_images

__all__ = ["ImageSet", "load_images"]
