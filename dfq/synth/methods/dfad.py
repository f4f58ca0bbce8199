"""`dfad`: Data-Free Adversarial Distillation (Fang et al. 2019, arXiv 1912.11006).

A generator G(z) and the student play a min-max game on the model discrepancy, the mean absolute
error (MAE) between teacher and student logits: MAE rather than KL because it upper-bounds the
discrepancy and does not saturate once the student is close (the paper's Sec. 3 and its
discrepancy ablation). Each game iteration has the paper's two stages: *imitation*, the student
takes k = `dfad.student_steps` steps lowering the MAE on fresh G(z) samples; *generation*, G takes
one step raising it, towards the "hard samples" where the student is still wrong. The reference
code (github VainF/Data-Free-Adversarial-Distillation, `DFAD_cifar.py`) computes exactly these two
losses, `l1_loss(s, t)` and `-l1_loss(s, t)`. Nothing in the original keeps G on the data manifold;
with a quantized student of the teacher's own architecture (ZAQ, Liu et al. 2021) the MAE alone
finds off-manifold inputs, so `dfad.bn_weight` adds the teacher's BN-statistics loss to G's loss.

The generator and both optimizers persist across rounds (a round is `dfad.iters` game iterations,
then `batch_size` fresh samples of the current G, labelled with the teacher's argmax).
`data_source()` hands the generator to `dfq quantize`, whose distillation then trains on samples
made on the fly, each preceded by one generation step against the student being distilled.
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
from dfq.synth.generator import Generator
from dfq.synth.inversion import floats
from dfq.synth.methods.generator_game import GeneratorGame
from dfq.synth.registry import Round, register_synthesizer
from dfq.synth.student import Student
from dfq.synth.synth_config import SynthConfig


def discrepancy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's model discrepancy: mean absolute error between logits (its reference code's
    `F.l1_loss(s_logit, t_logit)`)."""
    return F.l1_loss(student_logits.float(), teacher_logits.float())


def generation_step(
    generator: Generator,
    opt: torch.optim.Optimizer,
    teacher: nn.Module,
    student: nn.Module,
    z: torch.Tensor,
    data_config: DataConfig,
    bn_weight: float,
    amp: str = "off",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of G raising the teacher-student MAE (minus `bn_weight` x BN statistics).

    Gradients are taken for G's parameters only (`autograd.grad`), so a student whose parameters
    are being trained elsewhere (inside `dfq.quant.distill`) gets no stray gradients."""
    params = [p for p in generator.parameters() if p.requires_grad]
    hooks = BNStatHooks(teacher) if bn_weight > 0 else None
    with autocast(z.device, amp), hooks if hooks is not None else contextlib.nullcontext():
        x = data_config.normalize(generator(z).float()).to(device_of(teacher, z.device))
        x = x.contiguous(memory_format=memory_format(x))
        mae = discrepancy(student(x), teacher(x))
        bn = hooks.loss() if hooks is not None else mae.new_zeros(())
    loss = -mae + bn_weight * bn
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()
    opt.zero_grad(set_to_none=True)
    return mae.detach(), bn.detach()


def device_of(model: nn.Module, default: torch.device) -> torch.device:
    """Where `model` runs (the generator may live elsewhere, e.g. after `synthesize` moved the
    models back home)."""
    p = next(model.parameters(), None)
    return default if p is None else p.device


@torch.no_grad()
def sample(generator: Generator, z: torch.Tensor, data_config: DataConfig) -> torch.Tensor:
    """Normalized images of G (in train mode, as during the game: batch statistics in its BN)."""
    return data_config.normalize(generator(z).float())


@register_synthesizer("dfad")
class DFADSynthesizer(GeneratorGame):
    needs_bn = False  # the BN term is optional; checked in __init__ when its weight is > 0
    needs_student = True

    def __init__(
        self,
        teacher: nn.Module,
        cfg: SynthConfig,
        data_config: DataConfig,
        student: Student | None,
        device: torch.device,
    ) -> None:
        super().__init__(
            teacher,
            cfg,
            data_config,
            student,
            device,
            cfg.dfad.lr_generator,
            cfg.dfad.lr_student,
            student_trains=True,
        )
        if cfg.dfad.bn_weight > 0 and not bn_layers(teacher):
            raise DfqError(
                "the model has no BatchNorm layers for DFAD's BN-statistics term; set "
                "synth.dfad.bn_weight: 0 (the original DFAD has none)"
            )

    def steps_per_round(self) -> int:
        return self.cfg.dfad.iters

    def latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, device=self.device)

    def imitation_step(self, z: torch.Tensor) -> torch.Tensor:
        """One student step lowering the MAE on G(z) (the paper's imitation stage)."""
        x = sample(self.generator, z, self.data_config)
        x = x.contiguous(memory_format=memory_format(x))
        with torch.no_grad(), autocast(self.device, self.cfg.amp):
            t_logits = self.teacher(x)
        if self.opt_s is None:  # a student that is never trained: the MAE is only measured
            with torch.no_grad(), autocast(self.device, self.cfg.amp):
                return discrepancy(self.student.model(x), t_logits)
        with trainable(self.student.params):
            with autocast(self.device, self.cfg.amp):
                mae = discrepancy(self.student.model(x), t_logits)
            self.opt_s.zero_grad(set_to_none=True)
            mae.backward()
            self.opt_s.step()
            self.opt_s.zero_grad(set_to_none=True)  # no stale gradients left on the student
        return mae.detach()

    def generation_step(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One generator step raising the MAE (the paper's generation stage), plus BN statistics."""
        return generation_step(
            self.generator,
            self.opt_g,
            self.teacher,
            self.student.model,
            z,
            self.data_config,
            self.cfg.dfad.bn_weight,
            self.cfg.amp,
        )

    def run_round(self, r: int, targets: torch.Tensor, rng: random.Random, bar: StepBar) -> Round:
        cfg, iters = self.cfg, self.cfg.dfad.iters
        batch = cfg.batch_size
        if self.student.refresh is not None:  # once, on G's first samples (Student.prepare)
            self.student.prepare(sample(self.generator, self.latents(batch), self.data_config))
        history: list[dict[str, float]] = []
        values: dict[str, float] = {}
        for it in range(1, iters + 1):
            for _ in range(cfg.dfad.student_steps):
                mae_s = self.imitation_step(self.latents(batch))
            mae_g, bn = self.generation_step(self.latents(batch))
            if it % cfg.log_every == 0 or it == iters:
                values = floats({"mae_student": mae_s, "mae_generator": mae_g, "bn": bn})
                if not all(math.isfinite(v) for v in values.values()):
                    raise DfqFailure(
                        f"DFAD loss became NaN/inf in round {self.tag(r)}; lower "
                        "synth.dfad.lr_generator / lr_student"
                    )
                history.append({"step": r * iters + it, **values})
                done = it % cfg.log_every or cfg.log_every
                bar.step(
                    done,
                    f"round {self.tag(r)} " + " ".join(f"{k} {v:.3f}" for k, v in values.items()),
                )
        images = sample(self.generator, self.latents(len(targets)), self.data_config)
        with torch.no_grad():
            labels = self.teacher(images.contiguous(memory_format=memory_format(images))).argmax(1)
        return Round(images, labels, values, history)

    def data_source(self) -> DFADSource:
        return DFADSource(self.generator, self.opt_g, self.data_config, self.cfg)


class DFADSource:
    """DFAD inside `dfq quantize`: every distillation batch is fresh G(z), after one generation
    step against the student being distilled (the `dfq.quant.data_source.DataSource` protocol).

    Owns only the generator and its optimizer; `images` (the fixed set for range initialization
    and reconstruction) is set by `synthesize` to the finished calibration set."""

    def __init__(
        self,
        generator: Generator,
        opt: torch.optim.Optimizer,
        data_config: DataConfig,
        cfg: SynthConfig,
    ) -> None:
        self.generator, self.opt, self.data_config, self.cfg = generator, opt, data_config, cfg
        self.images: torch.Tensor | None = None

    def batch(
        self, n: int, student: nn.Module, teacher: nn.Module, step: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` fresh samples and the teacher's logits on them (no gradient)."""
        dev = next(self.generator.parameters()).device
        self.generator.train()
        z = torch.randn(n, self.cfg.latent_dim, generator=gen).to(dev)
        generation_step(
            self.generator, self.opt, teacher, student, z, self.data_config, self.cfg.dfad.bn_weight
        )
        z = torch.randn(n, self.cfg.latent_dim, generator=gen).to(dev)
        x = sample(self.generator, z, self.data_config).to(device_of(teacher, dev))
        with torch.no_grad():
            return x, teacher(x).float()
