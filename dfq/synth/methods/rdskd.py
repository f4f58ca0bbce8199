"""`rdskd`: Robustness and Diversity Seeking Data-Free KD (Han et al. 2021, arXiv 2011.03749).

A generator G(z), kept across rounds, trained from the teacher alone on a loss that asks for
- *sample authenticity*: the teacher classifies G(z) confidently, the one-hot loss (cross-entropy
  with its own argmax), and with large feature activations (minus the mean absolute penultimate
  feature); both come from DAFL (Chen et al. 2019), on which RDSKD builds;
- *class diversity*: a high entropy of the batch-mean teacher softmax (DAFL's information-entropy
  loss, minimized as sum p log p), so that every class appears;
- *inter-sample diversity*: different latents give different samples, the mode-seeking ratio of
  MSGAN (Mao et al. 2019): 1 / (d(x1, x2) / d(z1, z2) + eps) over the two halves of the batch,
  d the mean absolute difference. The authors' released code (github PengchaoHan/RDSKD,
  `generator-train.py`) divides by the distance between the teacher's softmax outputs instead of
  the latents; `rdskd.diversity_reference: teacher` selects that.
Authenticity and class diversity pull against each other, so the loss oscillates; RDSKD penalizes
loss increments exponentially. The released code minimizes exp(L_t - L_{t-1}) for the one-hot and
entropy terms, whose gradient is exp(L_t - L_{t-1}) * grad L_t: a term that rose since the previous
iteration pushes harder, one that fell pushes less. We apply that factor (detached, exponent capped
at `rdskd.max_increment`) to each authenticity and class-diversity term, which gives the same
gradient and keeps the logged values readable. The first iteration has no previous value (factor 1).

When a student is given and `rdskd.student_steps` > 0, the student takes that many KD steps on
each iteration's samples, as data-free KD alternates generator and student. A round is
`rdskd.iters` iterations, then `batch_size` fresh samples labelled with the teacher's argmax.
"""

from __future__ import annotations

import contextlib
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from dfq.errors import DfqError, DfqFailure
from dfq.models.data_config import DataConfig
from dfq.modes import autocast, memory_format, trainable
from dfq.progress import StepBar
from dfq.synth.bn_stats import BNStatHooks, bn_layers
from dfq.synth.features import last_linear, penultimate_features
from dfq.synth.inversion import floats
from dfq.synth.methods.generator_game import GeneratorGame
from dfq.synth.registry import Round, register_synthesizer
from dfq.synth.student import Student, kd_loss
from dfq.synth.synth_config import SynthConfig

PENALIZED = ("onehot", "activation", "entropy")  # authenticity and class diversity
EPS = 1e-5  # MSGAN's


def onehot_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the teacher with its own argmax: confident, real-looking samples."""
    return F.cross_entropy(logits, logits.argmax(1))


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """Minus the mean absolute penultimate feature: real images excite the features strongly."""
    return -features.float().abs().mean()


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """sum p log p of the batch-mean softmax (minus its entropy): minimal when classes are even."""
    p = F.softmax(logits.float(), 1).mean(0)
    return (p * p.clamp_min(1e-12).log()).sum()


def diversity_loss(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """MSGAN's mode-seeking term between the halves of the batch: small when samples differ at
    least as much as the `reference` they come from (latents, or teacher outputs)."""
    h = len(samples) // 2
    if h == 0:
        return samples.sum() * 0.0
    dx = (samples[:h] - samples[h : 2 * h]).abs().mean()
    dref = (reference[:h] - reference[h : 2 * h]).abs().mean()
    return 1.0 / (dx / (dref + EPS) + EPS)


def increment_penalty(
    loss: torch.Tensor, prev: torch.Tensor | None, max_increment: float
) -> torch.Tensor:
    """exp(L_t - L_{t-1}), detached: the factor RDSKD's exponential penalty puts on a term's
    gradient (> 1 when the term rose, < 1 when it fell; 1 without a previous value)."""
    if prev is None:
        return torch.ones_like(loss.detach())
    return torch.exp((loss.detach() - prev).clamp(max=max_increment))


@register_synthesizer("rdskd")
class RDSKDSynthesizer(GeneratorGame):
    needs_bn = False  # the BN term is optional (weight 0 by default, as the paper has none)
    needs_student = False

    def __init__(
        self,
        teacher: nn.Module,
        cfg: SynthConfig,
        data_config: DataConfig,
        student: Student | None,
        device: torch.device,
    ) -> None:
        r = cfg.rdskd
        super().__init__(
            teacher,
            cfg,
            data_config,
            student,
            device,
            r.lr_generator,
            r.lr_student,
            student_trains=r.student_steps > 0,
        )
        if r.bn_weight > 0 and not bn_layers(teacher):
            raise DfqError(
                "the model has no BatchNorm layers for RDSKD's BN-statistics term; "
                "set synth.rdskd.bn_weight: 0"
            )
        if r.activation_weight > 0:
            try:
                last_linear(teacher)
            except DfqError:
                raise DfqError(
                    "the model has no final Linear layer for RDSKD's activation term; "
                    "set synth.rdskd.activation_weight: 0"
                ) from None
        self.weights = {
            "onehot": r.onehot_weight,
            "activation": r.activation_weight,
            "entropy": r.entropy_weight,
            "diversity": r.diversity_weight,
            "bn": r.bn_weight,
        }
        self.prev: dict[str, torch.Tensor] = {}

    def steps_per_round(self) -> int:
        return self.cfg.rdskd.iters

    def latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, device=self.device)

    def losses(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Normalized samples G(z), the teacher's logits, and every (unweighted) loss term."""
        w = self.weights
        feats_ctx = (
            penultimate_features(self.teacher)
            if w["activation"] > 0
            else contextlib.nullcontext({})
        )
        bn_ctx = BNStatHooks(self.teacher) if w["bn"] > 0 else contextlib.nullcontext()
        with autocast(self.device, self.cfg.amp), feats_ctx as feats, bn_ctx as bn:
            pixels = self.generator(z).float()
            x = self.data_config.normalize(pixels)
            logits = self.teacher(x.contiguous(memory_format=memory_format(x))).float()
            zero = logits.new_zeros(())
            terms = {
                "onehot": onehot_loss(logits),
                "activation": activation_loss(feats["features"]) if feats else zero,
                "entropy": entropy_loss(logits),
            }
            ref = z if self.cfg.rdskd.diversity_reference == "latent" else F.softmax(logits, 1)
            terms["diversity"] = diversity_loss(pixels, ref)
            terms["bn"] = bn.loss() if bn is not None else zero
        return x, logits, terms

    def generator_step(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One step on the penalized loss; samples, teacher logits, terms and penalty factors."""
        x, logits, terms = self.losses(z)
        factors = {
            k: increment_penalty(terms[k], self.prev.get(k), self.cfg.rdskd.max_increment)
            for k in PENALIZED
        }
        total = sum(self.weights[k] * factors.get(k, 1.0) * v for k, v in terms.items())
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        self.prev = {k: terms[k].detach() for k in PENALIZED}
        out = {k: v.detach() for k, v in terms.items()}
        out.update({f"p_{k}": f for k, f in factors.items()})
        return x.detach(), logits.detach(), out

    def student_step(self, x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        """One KD step of the student on the generator's samples (DAFL / RDSKD's student phase)."""
        with trainable(self.student.params):
            with autocast(self.device, self.cfg.amp):
                logits = self.student.model(x.contiguous(memory_format=memory_format(x)))
                loss = kd_loss(logits, t_logits, self.student.temperature)
            self.opt_s.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_s.step()
            self.opt_s.zero_grad(set_to_none=True)  # no stale gradients left on the student
        return loss.detach()

    def run_round(self, r: int, targets: torch.Tensor, rng: random.Random, bar: StepBar) -> Round:
        cfg, iters = self.cfg, self.cfg.rdskd.iters
        history: list[dict[str, float]] = []
        values: dict[str, float] = {}
        for it in range(1, iters + 1):
            x, t_logits, terms = self.generator_step(self.latents(cfg.batch_size))
            if self.opt_s is not None:
                self.student.prepare(x)
                for _ in range(cfg.rdskd.student_steps):
                    terms["student_kd"] = self.student_step(x, t_logits)
            if it % cfg.log_every == 0 or it == iters:
                values = floats(terms)
                if not all(math.isfinite(v) for v in values.values()):
                    raise DfqFailure(
                        f"RDSKD loss became NaN/inf in round {self.tag(r)}; lower "
                        "synth.rdskd.lr_generator or the loss weights"
                    )
                history.append({"step": r * iters + it, **values})
                bar.step(
                    it % cfg.log_every or cfg.log_every,
                    f"round {self.tag(r)} " + " ".join(f"{k} {v:.3f}" for k, v in values.items()),
                )
        with torch.no_grad():
            images = self.data_config.normalize(self.generator(self.latents(len(targets))).float())
            labels = self.teacher(images.contiguous(memory_format=memory_format(images))).argmax(1)
        return Round(images, labels, values, history)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "prev": {k: v.cpu().clone() for k, v in self.prev.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.prev = {k: v.to(self.device) for k, v in state["prev"].items()}
