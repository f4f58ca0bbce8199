"""What DFAD and RDSKD share: a generator that persists across rounds, trained with Adam, and a
student trained alongside it; their state is what a resumed run needs to continue exactly."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dfq.device import cpu_state
from dfq.models.data_config import DataConfig
from dfq.synth.generator import seeded_generator
from dfq.synth.registry import Synthesizer
from dfq.synth.student import Student
from dfq.synth.synth_config import SynthConfig


class GeneratorGame(Synthesizer):
    """Base class: `self.generator`, its optimizer `opt_g`, and `opt_s` for the student's params
    (None when the student does not train)."""

    def __init__(
        self,
        teacher: nn.Module,
        cfg: SynthConfig,
        data_config: DataConfig,
        student: Student | None,
        device: torch.device,
        lr_generator: float,
        lr_student: float,
        student_trains: bool,
    ) -> None:
        super().__init__(teacher, cfg, data_config, student, device)
        self.generator = seeded_generator(cfg, data_config, device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr_generator, betas=cfg.betas)
        params = list(student.params) if student is not None and student_trains else []
        self.opt_s = torch.optim.Adam(params, lr=lr_student, betas=cfg.betas) if params else None

    def after_round(self, images: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        return {}  # the student (if any) already trained during the game

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "generator": cpu_state(self.generator),
            "opt_generator": copy.deepcopy(self.opt_g.state_dict()),
            "opt_student": None if self.opt_s is None else copy.deepcopy(self.opt_s.state_dict()),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.opt_g.load_state_dict(state["opt_generator"])
        if self.opt_s is not None and state.get("opt_student") is not None:
            self.opt_s.load_state_dict(state["opt_student"])
