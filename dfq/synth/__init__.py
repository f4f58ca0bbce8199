"""Data-free synthesis of calibration images: BatchNorm statistics, RGAL relations, DFAD, RDSKD."""

from __future__ import annotations

from dfq.synth.loop import synthesize
from dfq.synth.registry import SYNTHESIZERS, Round, Synthesizer, register_synthesizer
from dfq.synth.relation import student_relation_loss, synthesis_relation_loss
from dfq.synth.student import Student
from dfq.synth.synth_config import SynthConfig

__all__ = [
    "SYNTHESIZERS",
    "Round",
    "Student",
    "SynthConfig",
    "Synthesizer",
    "register_synthesizer",
    "student_relation_loss",
    "synthesis_relation_loss",
    "synthesize",
]
