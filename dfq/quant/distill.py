"""Network distillation: the FP model teaches the fake-quantized one on augmented calibration views.

KL divergence between softened logits (temperature T, scaled by T^2) plus RGAL's student-phase relation
loss (standard triplet on penultimate features, distance-weighted negatives, teacher argmax labels).
What is trained is set by `kd_params`: step sizes and biases ("scales"), or also the weights ("all").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfq.progress import StepBar
from dfq.quant.layers import quant_layers
from dfq.quant.quant_config import QuantConfig
from dfq.quant.reconstruct import trainable
from dfq.synth.relation import penultimate_features, student_relation_loss


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """A fresh view per image: random shift (reflect padding, crop) and horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    i = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    j = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def kd_parameters(model: nn.Module, what: str) -> list[nn.Parameter]:
    params = []
    for layer in quant_layers(model).values():
        params += [q.scale for q in (layer.weight_quantizer, layer.input_quantizer) if q is not None]
        if layer.bias is not None:
            params.append(layer.bias)
        if what == "all":
            params.append(layer.weight)
    return params


def distill(student: nn.Module, teacher: nn.Module, images: torch.Tensor, cfg: QuantConfig,
            progress: bool = True, seed: int = 0) -> dict:
    """`cfg.kd_iters` steps of KD (+ relation loss); returns first/last mean losses."""
    gen = torch.Generator().manual_seed(seed)
    student.eval().requires_grad_(False)
    teacher.eval().requires_grad_(False)
    params = kd_parameters(student, cfg.kd_params)
    opt = torch.optim.Adam(params, lr=cfg.kd_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.kd_iters))
    history: list[tuple[float, float]] = []
    relation = cfg.relation_weight > 0
    with trainable(params), penultimate_features(student) as feats, \
            StepBar(cfg.kd_iters, "distill", enabled=progress) as bar:
        for _ in range(cfg.kd_iters):
            idx = torch.randint(0, len(images), (min(cfg.kd_batch_size, len(images)),),
                                generator=gen).to(images.device)
            x = augment(images[idx], gen)
            with torch.no_grad():
                t_logits = teacher(x)
            s_logits = student(x)
            kd = kd_loss(s_logits, t_logits, cfg.kd_temperature)
            rel = student_relation_loss(feats["features"], t_logits.argmax(1), cfg.relation_margin) \
                if relation else kd * 0.0
            loss = kd + cfg.relation_weight * rel
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history.append((kd.item(), rel.item()))
            bar.step(1, f"kd {history[-1][0]:.4f} rel {history[-1][1]:.4f}")
    return _summary(history)


def _summary(history: list[tuple[float, float]]) -> dict:
    if not history:
        return {"kd_first": None, "kd_last": None, "relation_last": None}
    k = max(1, len(history) // 10)

    def mean(rows: list[tuple[float, float]], i: int) -> float:
        return round(sum(r[i] for r in rows) / len(rows), 6)

    return {"kd_first": mean(history[:k], 0), "kd_last": mean(history[-k:], 0),
            "relation_last": mean(history[-k:], 1), "steps": len(history)}


@torch.no_grad()
def mean_kd_loss(student: nn.Module, teacher: nn.Module, images: torch.Tensor,
                 temperature: float, batch_size: int = 256) -> float:
    """The KD loss over `images` without augmentation (for tests and reports)."""
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        total += float(kd_loss(student(x), teacher(x), temperature)) * len(x)
    return total / len(images)
