"""`synthesize`: optimize batches of images until the model sees its training statistics in them.

One batch at a time: a fresh image source (generator + latents, or pixels), Adam on the weighted sum
of the loss terms of DESIGN.md section 1, computed on an augmented view; the batch with the lowest
loss is kept. A loss that turns NaN/inf restarts the batch at a tenth of the learning rate, then
fails clearly.
"""
from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfq.calibration.dataset import CalibrationSet
from dfq.config import config_to_dict
from dfq.device import resolve_device
from dfq.errors import DfqFailure
from dfq.models.data_config import DataConfig
from dfq.progress import StepBar
from dfq.synth.augment import jitter_flip, swing
from dfq.synth.bn import BNStatHooks, require_bn
from dfq.synth.generator import Generator, make_source
from dfq.synth.relation import penultimate_features, synthesis_relation_loss
from dfq.synth.synth_config import SynthConfig

TERMS = ("bn", "ce", "rel", "adv", "tv", "l2")


@dataclass
class _Batch:
    images: torch.Tensor
    terms: dict[str, float]


def synthesize(model: nn.Module, cfg: SynthConfig, data_config: DataConfig,
               student: nn.Module | None = None, progress: bool = True, device: str = "auto",
               model_name: str = "") -> CalibrationSet:
    """A calibration set of `cfg.num_images` images synthesized from `model` alone.

    Args:
        student: when given (e.g. the quantized model inside `dfq quantize`), images are also pushed
            towards inputs where it agrees with `model` yet diverges most in distribution.
        device: 'auto', 'cpu' or 'cuda'; the models are moved there for the run and moved back.
    """
    require_bn(model, model_name or "the model")
    dev = torch.device(resolve_device(device))
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    targets = balanced_targets(cfg.num_images, data_config.num_classes)
    n_batches = -(-cfg.num_images // cfg.batch_size)
    start = time.perf_counter()
    images, sums = [], dict.fromkeys(TERMS, 0.0)
    with _frozen(model, dev), _frozen(student, dev), \
            StepBar(n_batches * cfg.iters, "synthesize", enabled=progress) as bar:
        generator = None if cfg.reinit_generator else _shared_generator(cfg, data_config, dev)
        for b, tgt in enumerate(targets.split(cfg.batch_size)):
            tag = f"{b + 1}/{n_batches}"
            run = _Run(model, student, cfg, data_config, rng, bar, tag, generator)
            batch = run.with_retries(tgt.to(dev))
            images.append(batch.images.cpu())
            for k in TERMS:
                sums[k] += batch.terms[k] * len(tgt) / cfg.num_images
    seconds = time.perf_counter() - start
    meta = {"data_config": data_config.to_dict(), "model": model_name, "seed": cfg.seed,
            "synth": config_to_dict(cfg), "final_losses": {k: round(v, 6) for k, v in sums.items()},
            "seconds": round(seconds, 3), "device": str(dev), "torch": torch.__version__,
            "student": student is not None}
    return CalibrationSet(torch.cat(images), targets, meta)


def balanced_targets(n: int, num_classes: int) -> torch.Tensor:
    """`n` labels cycling through the classes in a random order: balanced, every batch varied."""
    order = torch.randperm(num_classes)
    return order[torch.arange(n) % num_classes]


def _shared_generator(cfg: SynthConfig, data_config: DataConfig, dev: torch.device) -> Generator:
    return Generator(cfg.latent_dim, cfg.generator_width, data_config.input_size).to(dev)


@contextlib.contextmanager
def _frozen(model: nn.Module | None, dev: torch.device) -> Iterator[None]:
    """Eval mode, no parameter gradients, on `dev`; everything restored on exit."""
    if model is None:
        yield
        return
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    home = next((p.device for p in model.parameters()), dev)
    model.eval().requires_grad_(False).to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(home, memory_format=torch.contiguous_format).train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)


class _Run:
    """Synthesis of one batch (kept in an object so the retry loop and the step share state)."""

    def __init__(self, model: nn.Module, student: nn.Module | None, cfg: SynthConfig,
                 data_config: DataConfig, rng: random.Random, bar: StepBar, tag: str,
                 generator: Generator | None) -> None:
        self.model, self.student, self.cfg = model, student, cfg
        self.data_config, self.rng, self.bar, self.tag = data_config, rng, bar, tag
        self.generator = generator
        self.bar_pos = 0

    def with_retries(self, tgt: torch.Tensor) -> _Batch:
        for attempt in range(self.cfg.max_retries + 1):
            batch = self.optimize(tgt, lr_scale=0.1 ** attempt)
            if batch is not None:
                return batch
        raise DfqFailure(
            f"synthesis loss became NaN/inf in batch {self.tag} even at "
            f"{0.1 ** self.cfg.max_retries:g}x the learning rate; lower the learning rates or loss "
            "weights in the recipe"
        )

    def optimize(self, tgt: torch.Tensor, lr_scale: float) -> _Batch | None:
        """Best batch found in `cfg.iters` steps, or None when the loss stops being finite.

        The best batch is tracked on the device and the host only looks every `cfg.log_every` steps,
        so a GPU never waits for Python inside the loop.
        """
        cfg, dev = self.cfg, tgt.device
        source = make_source(cfg, self.data_config, len(tgt), self.generator).to(dev)
        source.train()
        opt = torch.optim.Adam(source.param_groups(cfg, lr_scale), betas=cfg.betas,
                               fused=dev.type == "cuda")
        best = _DeviceBest(dev, cfg.keep_best)
        feats_ctx = penultimate_features(self.model) if cfg.relation else contextlib.nullcontext({})
        with BNStatHooks(self.model, cfg.first_bn_weight) as bn, feats_ctx as feats, \
                swing(self.model, self.rng, cfg.swing):
            for step in range(1, cfg.iters + 1):
                with _autocast(dev, cfg.amp):
                    x = source()
                    total, terms = self.losses(x, tgt, bn, feats)
                best.offer(total.detach(), x.detach(), terms)
                if step % cfg.log_every == 0 or step == cfg.iters:
                    if not torch.isfinite(total):
                        return None
                    self.bar.step(step - self.bar_pos, f"batch {self.tag} " + " ".join(
                        f"{k} {v:.3f}" for k, v in _floats(terms).items() if v))
                    self.bar_pos = step
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                source.after_step()
        self.bar_pos = 0
        return best.result()

    def losses(self, x: torch.Tensor, tgt: torch.Tensor, bn: BNStatHooks,
               feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        view = jitter_flip(x, cfg.jitter, cfg.flip, self.rng)
        logits = self.model(view.contiguous(memory_format=_memory_format(view)))
        terms = {"bn": bn.loss(), "ce": F.cross_entropy(logits, tgt)}
        zero = logits.sum() * 0.0
        terms["rel"] = zero
        if cfg.relation and cfg.relation_weight > 0:
            labels = logits.argmax(1).detach() if cfg.relation_labels == "argmax" else tgt
            terms["rel"] = synthesis_relation_loss(feats["features"].float(), labels, cfg.relation_margin,
                                                   cfg.focal_window, cfg.relation_direction)
        logits = logits.float()
        terms["adv"] = (adversarial_loss(logits, self.student(view).float()) if self.student
                        else zero)
        terms["tv"] = total_variation(x) if cfg.tv_weight else zero
        terms["l2"] = x.pow(2).mean() if cfg.l2_weight else zero
        weights = {"bn": cfg.bn_weight, "ce": cfg.ce_weight, "rel": cfg.relation_weight,
                   "adv": cfg.adv_weight, "tv": cfg.tv_weight, "l2": cfg.l2_weight}
        total = sum(weights[k] * v.float() for k, v in terms.items())
        return total, {k: v.detach().float() for k, v in terms.items()}


class _DeviceBest:
    """The lowest-loss batch so far, kept on the device with `torch.where` (no host sync)."""

    def __init__(self, dev: torch.device, keep_best: bool) -> None:
        self.keep_best = keep_best
        self.total = torch.full((), float("inf"), device=dev)
        self.images: torch.Tensor | None = None
        self.terms: dict[str, torch.Tensor] = {}

    def offer(self, total: torch.Tensor, images: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        if self.images is None or not self.keep_best:
            self.total, self.images, self.terms = total, images.clone(), dict(terms)
            return
        better = total < self.total  # False for NaN: a diverged step never becomes the best
        self.total = torch.where(better, total, self.total)
        self.images = torch.where(better, images, self.images)
        self.terms = {k: torch.where(better, v, self.terms[k]) for k, v in terms.items()}

    def result(self) -> _Batch:
        return _Batch(self.images.float(), _floats(self.terms))


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """One host transfer for all loss terms."""
    values = torch.stack([v.float() for v in terms.values()]).tolist()
    return dict(zip(terms, values))


def _autocast(dev: torch.device, amp: str):
    """bfloat16 autocast on CUDA ('auto') or wherever asked ('bf16'); BN statistics stay float32."""
    enabled = amp == "bf16" or (amp == "auto" and dev.type == "cuda")
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=enabled)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last on CUDA, where convolutions (cuDNN, tensor cores) run fastest in it."""
    return torch.channels_last if x.is_cuda else torch.contiguous_format


def adversarial_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Minus the teacher-student KL on samples where both predict the same class (minimized)."""
    agree = (teacher_logits.argmax(1) == student_logits.argmax(1)).float()
    kl = F.kl_div(F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1),
                  reduction="none", log_target=True).sum(1)
    return -(kl * agree).sum() / agree.sum().clamp(min=1.0)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels: a smoothness prior."""
    return ((x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
            + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean())
