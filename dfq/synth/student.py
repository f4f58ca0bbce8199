"""The student that synthesis probes and, between batches, trains (RGAL's alternation).

Inside `dfq quantize` the student is the quantized model: the adversarial term pushes new images
towards inputs where it still disagrees with the teacher, and after each batch a few distillation
steps on the images made so far let the next batch probe its *current* weakness. Which parameters
an update trains, and how the student is re-initialized on the first synthetic images, are decided
by whoever builds it (`dfq.run` for a quantized student): synthesis only runs the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dfq.device import cpu_state
from dfq.modes import trainable


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence of softened logits, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student.float() / t, 1),
            F.log_softmax(teacher.float() / t, 1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


@dataclass
class Student:
    """A model (logits out), the parameters an update trains, and an optional `refresh` run once
    on the first synthetic images before training (e.g. re-initializing quantization ranges that
    were first set on noise)."""

    model: nn.Module
    params: list[nn.Parameter] = field(default_factory=list)
    refresh: Callable[[torch.Tensor], None] | None = None
    temperature: float = 4.0
    _opt: torch.optim.Optimizer | None = field(default=None, repr=False)
    _refreshed: bool = field(default=False, repr=False)

    def update(
        self,
        teacher: nn.Module,
        images: torch.Tensor,
        steps: int,
        batch_size: int,
        lr: float,
        gen: torch.Generator,
    ) -> float | None:
        """`steps` KD steps on random batches of `images` (flipped at random); the last loss."""
        self.prepare(images)
        if steps <= 0 or not self.params:
            return None
        if self._opt is None:
            self._opt = torch.optim.Adam(self.params, lr=lr)
        was_training = self.model.training
        self.model.eval()
        last = torch.zeros(())
        with trainable(self.params):
            for _ in range(steps):
                idx = torch.randint(
                    0, len(images), (min(batch_size, len(images)),), generator=gen
                ).to(images.device)
                x = images[idx]
                flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = kd_loss(self.model(x), t_logits, self.temperature)
                self._opt.zero_grad(set_to_none=True)
                loss.backward()
                self._opt.step()
                last = loss.detach()
        self.model.train(was_training)
        return float(last)

    def prepare(self, images: torch.Tensor) -> None:
        """Run `refresh` once, on the first synthetic images, before the student trains on any
        (methods that train it inside their own loop, as DFAD does, call this first)."""
        if self.refresh is not None and not self._refreshed:
            self.refresh(images)
            self._refreshed = True

    def state_dict(self) -> dict:
        """What a resumed run needs to continue with this student exactly."""
        return {
            "model": cpu_state(self.model),
            "opt": None if self._opt is None else self._opt.state_dict(),
            "refreshed": self._refreshed,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self._refreshed = bool(state["refreshed"])
        if state["opt"] is not None:
            self._opt = torch.optim.Adam(self.params, lr=1e-3)
            self._opt.load_state_dict(state["opt"])
