"""Synthesizers by name, as timm registers models: a dict and a decorator.

A synthesizer makes the set in *rounds* (one batch each): `run_round` returns the round's images,
labels, final loss terms and logged loss history; `after_round` may train the student on the images
made so far. The driver (`dfq.synth.loop.synthesize`) seeds each round on its own, so a run that
is resumed from saved rounds (with the saved `state_dict`) ends with the same images. Adding a
method means adding one module under `dfq/synth/methods/` that registers a subclass.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from dfq.errors import DfqError
from dfq.models.data_config import DataConfig
from dfq.progress import StepBar
from dfq.synth.student import Student
from dfq.synth.synth_config import SynthConfig


@dataclass
class Round:
    """One batch of the set: normalized images on the run's device, labels, final loss terms,
    and the loss terms logged every `log_every` steps (`{"step": ..., "bn": ..., ...}`)."""

    images: torch.Tensor
    labels: torch.Tensor
    terms: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


class Synthesizer:
    """Base class: one synthesis method, constructed once per set."""

    name: ClassVar[str] = ""
    needs_bn: ClassVar[bool] = True  # matches BatchNorm statistics, so refuses models without BN
    needs_student: ClassVar[bool] = False  # plays a game against the student (DFAD)

    def __init__(
        self,
        teacher: nn.Module,
        cfg: SynthConfig,
        data_config: DataConfig,
        student: Student | None,
        device: torch.device,
    ) -> None:
        self.teacher, self.cfg, self.data_config = teacher, cfg, data_config
        self.student, self.device = student, device

    def num_rounds(self) -> int:
        return -(-self.cfg.num_images // self.cfg.batch_size)

    def tag(self, r: int) -> str:
        return f"{r + 1}/{self.num_rounds()}"

    def steps_per_round(self) -> int:
        """Progress-bar steps one round takes."""
        return self.cfg.iters

    def run_round(self, r: int, targets: torch.Tensor, rng: random.Random, bar: StepBar) -> Round:
        raise NotImplementedError

    def after_round(self, images: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        """RGAL's alternation: train the student a few steps on every image made so far."""
        cfg = self.cfg
        if self.student is None or cfg.student_steps <= 0:
            return {}
        loss = self.student.update(
            self.teacher, images, cfg.student_steps, cfg.student_batch_size, cfg.student_lr, gen
        )
        return {} if loss is None else {"student_kd": loss}

    def state_dict(self) -> dict:
        return {"student": None if self.student is None else self.student.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.student is not None and state.get("student") is not None:
            self.student.load_state_dict(state["student"])

    def data_source(self) -> object | None:
        """A source of fresh fine-tuning images (DFAD's generator), or None for a fixed set.

        It needs `batch(n, student, teacher, step, gen) -> (images, teacher_logits)`; the driver
        sets its `images` to the finished set (`dfq.quant.data_source.DataSource`)."""
        return None


SYNTHESIZERS: dict[str, type[Synthesizer]] = {}


def register_synthesizer(name: str):
    def deco(cls: type[Synthesizer]) -> type[Synthesizer]:
        cls.name = name
        SYNTHESIZERS[name] = cls
        return cls

    return deco


def get_synthesizer(name: str) -> type[Synthesizer]:
    """The registered class, or a one-line error naming the closest method."""
    if name in SYNTHESIZERS:
        return SYNTHESIZERS[name]
    close = difflib.get_close_matches(name, sorted(SYNTHESIZERS), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(SYNTHESIZERS)}"
    raise DfqError(f"unknown synthesis method '{name}'; {hint}")
