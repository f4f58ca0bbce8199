"""Network distillation: the FP model teaches the fake-quantized one on views of the calibration
set.

KL divergence between softened logits (temperature T, scaled by T^2) plus RGAL's student-phase
relation loss (standard triplet on the student's penultimate features, negatives sampled by
distances between its logits, teacher argmax labels) and, with `kd_feature_weight` > 0, the
stage outputs' distance to the teacher's (`feature_kd`; cached with the logits for a fixed set,
otherwise read from the teacher call that made the logits). With `kd_low_res`, a fixed set's
steps but the last `kd_full_res_iters` read a copy resized to that side (each step costs about the
pixel ratio; the teacher's outputs are cached at both sizes), the last ones the images as they
are; the learning rate falls along a cosine within each phase, so the full-resolution steps start
from `kd_lr` again (progressive resizing).
What is trained is set by `kd_params`: step sizes and biases ("scales"), or also the weights
("all"); with `kd_act_scale_lr`, activation step sizes learn at a rate relative to their size.
Images come from a data source: a fixed calibration set in K x M class batches, or a live one
such as DFAD's generator. Losses stay on the device and reach the host every
`log_every` steps.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from dfq.modes import autocast, channels_last, memory_format, trainable
from dfq.progress import StepBar
from dfq.quant.data_source import DataSource, FixedImages, low_res_view
from dfq.quant.feature_kd import feature_loss, feature_points, stage_features
from dfq.quant.layers import quant_layers
from dfq.quant.quant_config import QuantConfig
from dfq.quant.quantizer import MIN_SCALE, activation_quantizers
from dfq.synth.features import penultimate_features
from dfq.synth.relation import student_relation_loss
from dfq.synth.student import kd_loss


def kd_parameters(model: nn.Module, what: str) -> list[nn.Parameter]:
    """Step sizes (weights and activations) and biases, plus the weights for 'all'."""
    params = [q.scale for q in activation_quantizers(model)]
    for layer in quant_layers(model).values():
        params.append(layer.weight_quantizer.scale)
        if layer.bias is not None:
            params.append(layer.bias)
        if what == "all":
            params.append(layer.weight)
    return params


def kd_param_groups(model: nn.Module, cfg: QuantConfig) -> list[dict]:
    """The optimizer's parameter groups: everything `kd_parameters` trains at `kd_lr`, except,
    with `kd_act_scale_lr` > 0, each activation step size in a group of its own at that rate
    times its current value (Adam's steps are about lr in size whatever the parameter's scale)."""
    params = kd_parameters(model, cfg.kd_params)
    if cfg.kd_act_scale_lr <= 0:
        return [{"params": params}]
    own = {id(q.scale): q.scale for q in activation_quantizers(model)}
    groups = [{"params": [p for p in params if id(p) not in own]}]
    for scale in own.values():
        size = float(scale.detach().abs().mean().clamp_min(MIN_SCALE))
        groups.append({"params": [scale], "lr": cfg.kd_act_scale_lr * size})
    return groups


def distill(
    student: nn.Module,
    teacher: nn.Module,
    source: DataSource | torch.Tensor,
    cfg: QuantConfig,
    progress: bool = True,
    seed: int = 0,
) -> dict:
    """`cfg.kd_iters` steps of KD (+ relation loss) on a data source or fixed images; returns
    first/last losses and the history."""
    gen = torch.Generator().manual_seed(seed)
    points = []  # a data source needs `images` (for their shape) only with feature distillation
    if cfg.kd_feature_weight > 0:
        images = source if isinstance(source, torch.Tensor) else source.images
        every = cfg.kd_feature_points == "blocks"
        points = feature_points(teacher, tuple(images.shape[1:]), every_block=every)
    features = bool(points)  # a model without blocks has no stage outputs to compare
    n_low, low_source = 0, None  # steps on the low-resolution copy, which come first
    if isinstance(source, torch.Tensor):
        cached = partial(
            FixedImages,
            teacher=teacher,
            augment=cfg.kd_augment,
            per_class=cfg.class_images,
            batch_size=cfg.kd_batch_size,
            stage_names=points,
        )
        low = low_res_view(source, cfg.kd_low_res)
        n_low = cfg.kd_iters - cfg.kd_full_res_iters if low is not None else 0
        low_source = cached(low) if n_low else None
        # no full-resolution steps: the full-size set is not needed (nor its teacher cache)
        source = low_source if low_source is not None and n_low == cfg.kd_iters else cached(source)
    student.eval().requires_grad_(False)
    teacher.eval().requires_grad_(False)
    groups = kd_param_groups(student, cfg)
    params = [p for g in groups for p in g["params"]]
    dev = next(student.parameters()).device
    opt = torch.optim.Adam(groups, lr=cfg.kd_lr, fused=dev.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _phase_cosine(s, n_low, cfg.kd_iters))
    history: list[dict[str, float]] = []
    relation = cfg.relation_weight > 0
    sums = torch.zeros(3)
    count = 0
    with (
        trainable(params),
        channels_last(student, teacher),
        penultimate_features(student) as feats,
        stage_features(student, teacher, points) as (s_stages, t_stages),
        StepBar(cfg.kd_iters, "distill", enabled=progress) as bar,
    ):
        for step in range(cfg.kd_iters):
            batches = low_source if step < n_low else source
            with autocast(dev, cfg.amp):
                t_stages.clear()
                x, t_logits = batches.batch(cfg.kd_batch_size, student, teacher, step, gen)
                x = x.contiguous(memory_format=memory_format(x))
                if features and not t_stages:  # a source with cached logits ran no teacher
                    t_stages.update(getattr(batches, "stages", {}))
                    if not t_stages:  # nor did it cache the stage outputs
                        with torch.no_grad():
                            teacher(x)
                s_logits = student(x).float()
            t_logits = t_logits.float()
            kd = kd_loss(s_logits, t_logits, cfg.kd_temperature)
            rel = (
                student_relation_loss(
                    feats["features"], s_logits.detach(), t_logits.argmax(1), cfg.relation_margin
                )
                if relation
                else kd * 0.0
            )
            feat = feature_loss(s_stages, t_stages) if features else kd * 0.0
            loss = kd + cfg.relation_weight * rel + cfg.kd_feature_weight * feat
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums = sums.to(kd.device) + torch.stack([kd.detach(), rel.detach(), feat.detach()])
            count += 1
            if count == cfg.log_every or step == cfg.kd_iters - 1:
                kd_mean, rel_mean, feat_mean = (sums / count).tolist()
                entry = {"step": step + 1, "kd": kd_mean, "rel": rel_mean}
                history.append({**entry, "feature": feat_mean} if features else entry)
                shown = f"kd {kd_mean:.4f} rel {rel_mean:.4f}"
                bar.step(count, shown + (f" feat {feat_mean:.4f}" if features else ""))
                sums, count = torch.zeros(3), 0
    return _summary(history)


def _phase_cosine(step: int, n_low: int, total: int) -> float:
    """The learning-rate factor: a cosine from 1 towards 0 over each phase, the first `n_low`
    steps (low resolution) and the rest."""
    first, end = (0, n_low) if step < n_low else (n_low, max(total, step + 1))
    return 0.5 * (1.0 + math.cos(math.pi * (step - first) / (end - first)))


def _summary(history: list[dict[str, float]]) -> dict:
    if not history:
        return {"kd_first": None, "kd_last": None, "relation_last": None, "history": []}
    return {
        "kd_first": round(history[0]["kd"], 6),
        "kd_last": round(history[-1]["kd"], 6),
        "relation_last": round(history[-1]["rel"], 6),
        **({"feature_last": round(history[-1]["feature"], 6)} if "feature" in history[-1] else {}),
        "steps": history[-1]["step"],
        "history": history,
    }


@torch.no_grad()
def mean_kd_loss(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    temperature: float,
    batch_size: int = 256,
) -> float:
    """The KD loss over `images` without augmentation (for tests and reports)."""
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        total += float(kd_loss(student(x), teacher(x), temperature)) * len(x)
    return total / len(images)
