"""Data-free synthesis of calibration images from BatchNorm statistics and RGAL relations."""
from __future__ import annotations

from dfq.synth.loop import synthesize
from dfq.synth.relation import student_relation_loss, synthesis_relation_loss
from dfq.synth.synth_config import SynthConfig

__all__ = ["SynthConfig", "student_relation_loss", "synthesis_relation_loss", "synthesize"]
