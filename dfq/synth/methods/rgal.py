"""`rgal` (the default): relation-guided adversarial learning (RGAL), as its paper describes.

Per batch: BN statistics, class prior, the synthesis relation loss (triplets on the teacher's
pooled stage outputs, focal weighted negatives, roles swapped: diverse within a class, confusable
across classes) and the adversarial term against the student; after each batch the student takes a
few distillation steps on everything synthesized so far, so the next batch probes its current
weakness. The generator is re-initialized per batch unless the recipe says otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from dfq.models.blocks import stage_outputs
from dfq.models.data_config import DataConfig
from dfq.synth.inversion import Inversion
from dfq.synth.methods.bn import BNSynthesizer
from dfq.synth.registry import Synthesizer, register_synthesizer
from dfq.synth.student import Student
from dfq.synth.synth_config import SynthConfig


@register_synthesizer("rgal")
class RGALSynthesizer(BNSynthesizer):
    def __init__(
        self,
        teacher: nn.Module,
        cfg: SynthConfig,
        data_config: DataConfig,
        student: Student | None,
        device: torch.device,
    ) -> None:
        Synthesizer.__init__(self, teacher, cfg, data_config, student, device)
        stages = (
            stage_outputs(teacher, data_config.input_size)
            if cfg.relation and cfg.relation_features == "stages"
            else []
        )
        self.inversion = Inversion(
            teacher,
            cfg,
            data_config,
            relation=True,
            student=None if student is None else student.model,
            stages=stages,
        )
