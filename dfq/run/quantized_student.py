"""The student synthesis plays against: the model quantized as the run will quantize it.

It starts range-initialized on Gaussian noise (so the adversarial term has a quantized model to
probe from the first batch); once the first batch exists its activation ranges are set again on
those images, and RGAL's alternation trains its step sizes and biases between batches.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dfq.models.data_config import DataConfig
from dfq.quant.distill import kd_parameters
from dfq.quant.insert import prepare, reinit_activation_ranges
from dfq.quant.quant_config import QuantConfig
from dfq.synth import Student

NOISE_IMAGES = 64


def quantized_student(
    model: nn.Module,
    cfg: QuantConfig,
    data_config: DataConfig,
    seed: int,
    device: str | torch.device,
) -> Student:
    student = copy.deepcopy(model).eval().to(device)
    noise = torch.randn(
        NOISE_IMAGES, *data_config.input_size, generator=torch.Generator().manual_seed(seed)
    ).to(device)
    prepare(student, cfg, list(noise.split(cfg.calib_batch_size)))

    def refresh(images: torch.Tensor) -> None:
        reinit_activation_ranges(student, cfg, list(images.split(cfg.calib_batch_size)))

    return Student(student, kd_parameters(student, "scales"), refresh, cfg.kd_temperature)
