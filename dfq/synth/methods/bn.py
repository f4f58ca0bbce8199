"""`bn`: BatchNorm statistics and class prior only (ZeroQ / Genie-style inversion), the baseline
the relation losses are measured against. Also the base of `rgal`, which adds its terms."""

from __future__ import annotations

import random

import torch
from torch import nn

from dfq.models.data_config import DataConfig
from dfq.progress import StepBar
from dfq.synth.inversion import Inversion
from dfq.synth.registry import Round, Synthesizer, register_synthesizer
from dfq.synth.student import Student
from dfq.synth.synth_config import SynthConfig


@register_synthesizer("bn")
class BNSynthesizer(Synthesizer):
    def __init__(
        self,
        teacher: nn.Module,
        cfg: SynthConfig,
        data_config: DataConfig,
        student: Student | None,
        device: torch.device,
    ) -> None:
        super().__init__(teacher, cfg, data_config, None, device)  # no student, no adversary
        self.inversion = Inversion(
            teacher, cfg, data_config, relation=False, student=None, stages=[]
        )

    def run_round(self, r: int, targets: torch.Tensor, rng: random.Random, bar: StepBar) -> Round:
        return self.inversion.run(targets, rng, bar, self.tag(r), r * self.cfg.iters)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "inversion": self.inversion.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.inversion.load_state_dict(state.get("inversion") or {}, self.device)
