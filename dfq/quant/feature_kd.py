"""Feature distillation: the quantized model's stage outputs pulled towards the FP model's.

Logit distillation gives a few hundred synthetic images one vector each to learn from; the
outputs of each resolution stage carry far more, and keep every stage near the FP model's
behaviour rather than only the last (the signal block reconstruction uses, spent network-wide
in the same steps); `kd_feature_points: blocks` compares every block's output instead. The loss
per compared output is the squared error normalized by the teacher output's energy, so outputs of
any width and scale count alike; their mean is returned.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from dfq.models.blocks import stage_outputs
from dfq.synth.features import captured_outputs


def feature_points(
    teacher: nn.Module, input_size: tuple[int, ...], every_block: bool = False
) -> list[str]:
    """The blocks whose outputs are compared: each resolution stage's last block, or with
    `every_block` each block (bare layers left out: the student's are BN-folded, the teacher's
    are not)."""
    return stage_outputs(teacher, input_size, blocks_only=True, every_unit=every_block)


@contextmanager
def stage_features(
    student: nn.Module, teacher: nn.Module, names: list[str]
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """The outputs of blocks `names` of both models on each forward pass; hooks removed on exit."""
    with ExitStack() as stack:
        s = stack.enter_context(captured_outputs(student, names))
        t = stack.enter_context(captured_outputs(teacher, names))
        yield s, t


def feature_loss(student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor]):
    """Mean over stages of `|s - t|^2 / |t|^2` (see the module docstring)."""
    losses = []
    for name, t in teacher_feats.items():
        t = t.detach().float()
        s = student_feats[name].float()
        losses.append((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
    return torch.stack(losses).mean()
