"""Model inversion of one batch: optimize images until the model sees its BN statistics in them.

A fresh image source (generator + latents, or pixels), Adam on the weighted sum of the loss terms of
DESIGN.md section 1 (BN statistics, class prior, RGAL relation, adversarial, priors), computed on an
augmented view; the batch with the lowest loss is kept. With `low_res`, all but the last
`full_res_iters` steps run at that resolution (BN statistics are per channel and survive resizing;
a 224-pixel model costs about 7x less per step at 112), then the images are upsampled and refined
as pixels at full resolution. A loss that turns NaN/inf restarts the batch at a tenth of the
learning rate, then fails clearly. The host looks at the GPU only every `log_every` steps.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from dfq.device import cpu_state
from dfq.errors import DfqFailure
from dfq.models.data_config import DataConfig, low_res_size
from dfq.modes import autocast, memory_format
from dfq.progress import StepBar
from dfq.synth.augment import jitter_flip, swing
from dfq.synth.bn_stats import BNStatHooks
from dfq.synth.features import captured_outputs, penultimate_features
from dfq.synth.generator import Generator, ImageSource, PixelSource, make_source
from dfq.synth.registry import Round
from dfq.synth.relation import synthesis_relation_loss
from dfq.synth.synth_config import SynthConfig

TERMS = ("bn", "ce", "rel", "adv", "tv", "l2")


class Inversion:
    """Optimizes batches for `teacher`; `relation` / `student` switch the RGAL terms on."""

    def __init__(
        self,
        teacher: nn.Module,
        cfg: SynthConfig,
        data_config: DataConfig,
        relation: bool,
        student: nn.Module | None,
        stages: list[str],
    ) -> None:
        self.teacher, self.cfg, self.data_config = teacher, cfg, data_config
        self.relation = relation and cfg.relation and cfg.relation_weight > 0
        self.student = student if cfg.adv_weight > 0 else None
        self.stages = stages
        self.generator: Generator | None = None  # kept across batches unless reinit_generator

    def state_dict(self) -> dict:
        """The generator kept across batches (`reinit_generator: false`), if any."""
        if self.generator is None:
            return {}
        return {"generator": cpu_state(self.generator), "size": list(self.generator.out_size)}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        if not state:
            return
        size = (self.data_config.input_size[0], *state["size"])
        self.generator = Generator(self.cfg.latent_dim, self.cfg.generator_width, size).to(device)
        self.generator.load_state_dict(state["generator"])

    def run(
        self, targets: torch.Tensor, rng: random.Random, bar: StepBar, tag: str, first_step: int = 0
    ) -> Round:
        """The best batch for `targets` (on their device), with retries at lower learning rates."""
        for attempt in range(self.cfg.max_retries + 1):
            result = self._phases(targets, rng, bar, tag, 0.1**attempt, first_step)
            if result is not None:
                return result
        raise DfqFailure(
            f"synthesis loss became NaN/inf in batch {tag} even at "
            f"{0.1**self.cfg.max_retries:g}x the learning rate; lower the learning rates or loss "
            "weights in the recipe"
        )

    def _phases(
        self,
        targets: torch.Tensor,
        rng: random.Random,
        bar: StepBar,
        tag: str,
        lr_scale: float,
        first_step: int,
    ) -> Round | None:
        cfg, dc = self.cfg, self.data_config
        c, h, w = dc.input_size
        low = low_res_size(h, w, cfg.low_res)
        n_low = cfg.iters - cfg.full_res_iters if low else 0
        history: list[dict[str, float]] = []
        images = None
        if n_low:
            source = self._source(replace(dc, input_size=(c, *low)), len(targets), targets.device)
            done = self._optimize(
                source,
                targets,
                n_low,
                rng,
                bar,
                tag,
                lr_scale,
                history,
                first_step,
                jitter_scale=cfg.low_res / max(h, w),
            )
            if done is None:
                return None
            images = F.interpolate(done.images, size=(h, w), mode="bilinear", align_corners=False)
        n_full = cfg.iters - n_low
        if images is None:
            source = self._source(dc, len(targets), targets.device)
        elif n_full:
            source = PixelSource(cfg, dc, len(targets)).to(targets.device)
            source.start_from(images)
        else:
            return Round(
                images.clamp(*dc.input_bounds(dc.channel_stats(images.device))),
                targets,
                done.terms,
                history,
            )
        done = self._optimize(
            source,
            targets,
            n_full,
            rng,
            bar,
            tag,
            lr_scale,
            history,
            first_step + n_low,
            jitter_scale=1.0,
        )
        return None if done is None else Round(done.images, targets, done.terms, history)

    def _source(self, dc: DataConfig, batch: int, dev: torch.device) -> ImageSource:
        cfg = self.cfg
        if cfg.param == "generator" and not cfg.reinit_generator:
            if self.generator is None or self.generator.out_size != tuple(dc.input_size[1:]):
                self.generator = Generator(cfg.latent_dim, cfg.generator_width, dc.input_size).to(
                    dev
                )
            return make_source(cfg, dc, batch, self.generator).to(dev)
        return make_source(cfg, dc, batch).to(dev)

    def _optimize(
        self,
        source: ImageSource,
        targets: torch.Tensor,
        iters: int,
        rng: random.Random,
        bar: StepBar,
        tag: str,
        lr_scale: float,
        history: list[dict[str, float]],
        first_step: int,
        jitter_scale: float,
    ) -> Round | None:
        """Best batch of `iters` steps on `source`, or None when the loss stops being finite."""
        cfg, dev = self.cfg, targets.device
        source.train()
        opt = torch.optim.Adam(
            source.param_groups(cfg, lr_scale), betas=cfg.betas, fused=dev.type == "cuda"
        )
        best = DeviceBest(dev, cfg.keep_best)
        jitter = max(0, round(cfg.jitter * jitter_scale))
        feats_ctx = self._features() if self.relation else contextlib.nullcontext({})
        with (
            BNStatHooks(self.teacher, cfg.first_bn_weight, cfg.bn_tail_z) as bn,
            feats_ctx as feats,
            swing(self.teacher, rng, cfg.swing),
        ):
            for step in range(1, iters + 1):
                with autocast(dev, cfg.amp):
                    x = source()
                    total, terms = self.losses(x, targets, bn, feats, jitter, rng)
                best.offer(total.detach(), x.detach(), terms)
                if step % cfg.log_every == 0 or step == iters:
                    values = floats(terms)
                    if not all(math.isfinite(v) for v in values.values()):
                        return None
                    history.append({"step": first_step + step, **values})
                    bar.step(
                        cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every,
                        f"batch {tag} " + " ".join(f"{k} {v:.3f}" for k, v in values.items() if v),
                    )
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                source.after_step()
        return best.result(targets)

    def _features(self):
        if self.cfg.relation_features == "stages":
            return captured_outputs(self.teacher, self.stages)
        return penultimate_features(self.teacher)

    def losses(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        bn: BNStatHooks,
        feats: dict[str, torch.Tensor],
        jitter: int,
        rng: random.Random,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        view = jitter_flip(x, jitter, cfg.flip, rng)
        logits = self.teacher(view.contiguous(memory_format=memory_format(view)))
        terms = {"bn": bn.loss(), "ce": F.cross_entropy(logits.float(), targets)}
        zero = logits.sum() * 0.0
        terms["rel"] = zero
        if self.relation:
            labels = logits.argmax(1).detach() if cfg.relation_labels == "argmax" else targets
            terms["rel"] = synthesis_relation_loss(
                list(feats.values()),
                logits.float(),
                labels,
                cfg.relation_margin,
                cfg.focal_window,
                cfg.relation_direction,
                cfg.density_ratio,
            )
        logits = logits.float()
        terms["adv"] = (
            adversarial_loss(logits, self.student(view).float())
            if self.student is not None
            else zero
        )
        terms["tv"] = total_variation(x) if cfg.tv_weight else zero
        terms["l2"] = x.pow(2).mean() if cfg.l2_weight else zero
        weights = {
            "bn": cfg.bn_weight,
            "ce": cfg.ce_weight,
            "rel": cfg.relation_weight,
            "adv": cfg.adv_weight,
            "tv": cfg.tv_weight,
            "l2": cfg.l2_weight,
        }
        total = sum(weights[k] * v.float() for k, v in terms.items())
        return total, {k: v.detach().float() for k, v in terms.items()}


class DeviceBest:
    """The lowest-loss batch so far, kept on the device with `torch.where` (no host sync)."""

    def __init__(self, dev: torch.device, keep_best: bool) -> None:
        self.keep_best = keep_best
        self.total = torch.full((), float("inf"), device=dev)
        self.images: torch.Tensor | None = None
        self.terms: dict[str, torch.Tensor] = {}

    def offer(
        self, total: torch.Tensor, images: torch.Tensor, terms: dict[str, torch.Tensor]
    ) -> None:
        if self.images is None or not self.keep_best:
            self.total, self.images, self.terms = total, images.clone(), dict(terms)
            return
        better = total < self.total  # False for NaN: a diverged step never becomes the best
        self.total = torch.where(better, total, self.total)
        self.images = torch.where(better, images, self.images)
        self.terms = {k: torch.where(better, v, self.terms[k]) for k, v in terms.items()}

    def result(self, targets: torch.Tensor) -> Round:
        return Round(self.images.float(), targets, floats(self.terms))


def floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """One host transfer for all loss terms."""
    values = torch.stack([v.float() for v in terms.values()]).tolist()
    return dict(zip(terms, values, strict=True))


def adversarial_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Minus the teacher-student KL on samples where both predict the same class (minimized)."""
    agree = (teacher_logits.argmax(1) == student_logits.argmax(1)).float()
    kl = F.kl_div(
        F.log_softmax(student_logits, 1),
        F.log_softmax(teacher_logits, 1),
        reduction="none",
        log_target=True,
    ).sum(1)
    return -(kl * agree).sum() / agree.sum().clamp(min=1.0)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels: a smoothness prior."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(
        2
    ).mean()
