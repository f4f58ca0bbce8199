"""The pictures a run leaves next to report.json, so a user can see what happened at a glance.

`calibration.png` (what the calibration images look like and what the FP model thinks they are),
`losses.png` (did each stage converge) and `layers.png` (which layers lose most to quantization).
Figures are drawn with matplotlib's Agg canvas directly: no display, no global backend switch.
Each `*_figure` builder returns the Figure (for notebooks and tests); the writers save it as PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from timm.data import ImageNetInfo
from torch import nn

from dfq.files import atomic_path
from dfq.models.data_config import DataConfig
from dfq.quant.layers import quant_layers

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
MAX_SQNR_DB = 100.0  # an exact layer (zero error) is shown as this, not infinity
CELL = 1.3  # inches per calibration image


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write `fig` as PNG atomically (the suffix of the temporary name is not `.png`)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def class_names(model: nn.Module, num_classes: int, model_name: str = "") -> list[str] | None:
    """Readable class names when the model's label space is known, else None (indices shown).

    CIFAR-10 for the `cifar10_*` zoo models; labels a timm model carries in its pretrained config;
    ImageNet-1k (timm's offline table, in the order torchvision and timm both use) for 1000 classes
    (1001 with a leading background class when the timm config says `label_offset`).
    """
    if model_name.startswith("cifar10_") and num_classes == 10:
        return list(CIFAR10_CLASSES)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    offset = int(cfg.get("label_offset") or 0)
    if num_classes - offset != 1000:
        return None
    try:
        info = ImageNetInfo("imagenet-1k")
        names = [info.index_to_description(i).split(",")[0] for i in range(1000)]
    except (OSError, ValueError, KeyError):
        return None
    return ["background"] * offset + names


def _name(i: int, names: Sequence[str] | None) -> str:
    return names[i] if names is not None and 0 <= i < len(names) else str(i)


def calibration_figure(
    images: torch.Tensor,
    labels: torch.Tensor,
    data_config: DataConfig,
    teacher_logits: torch.Tensor,
    class_names: Sequence[str] | None = None,
    max_classes: int = 10,
    per_class: int = 8,
) -> Figure:
    """One row per target class, each image titled with the FP model's top class and confidence.

    Green titles: the FP model agrees with the target. Unlabelled images (labels < 0, real images
    without a folder per class) are grouped by the FP model's prediction instead.
    """
    probs = teacher_logits.detach().float().softmax(1).cpu()
    conf, pred = probs.max(1)
    labels = labels.detach().cpu().long()
    by_prediction = bool((labels < 0).all())
    keys = pred if by_prediction else labels
    classes = [int(c) for c in torch.unique(keys[keys >= 0]).tolist()][:max_classes]
    pixels = data_config.denormalize(images.detach().float().cpu()).clamp(0, 1)
    rows = [(c, (keys == c).nonzero().flatten()[:per_class].tolist()) for c in classes]
    cols = max([len(idx) for _, idx in rows], default=1)
    fig = Figure(figsize=(CELL * cols + 1.2, CELL * max(len(rows), 1) + 0.6))
    if not rows:
        fig.text(0.5, 0.5, "no calibration images", ha="center", va="center")
        return fig
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (c, idx) in enumerate(rows):
        for k, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(idx):
                ax.set_axis_off()
                continue
            i = idx[k]
            _show(ax, pixels[i])
            p = int(pred[i])
            ax.set_title(
                f"{_name(p, class_names)} {float(conf[i]):.2f}",
                fontsize=7,
                color="black" if by_prediction else ("green" if p == c else "red"),
            )
        prefix = "predicted " if by_prediction else ""
        axes[r][0].set_ylabel(prefix + _name(c, class_names), fontsize=8)
    what = "FP model's prediction" if by_prediction else "target class"
    fig.suptitle(
        f"Calibration images by {what}; titles: FP model's top class and confidence", fontsize=9
    )
    fig.tight_layout()
    return fig


def _show(ax: Axes, img: torch.Tensor) -> None:
    if img.shape[0] == 3:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    else:  # grayscale (or an unusual channel count: its first channel)
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def calibration_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    data_config: DataConfig,
    teacher_logits: torch.Tensor,
    class_names: Sequence[str] | None,
    path: str | Path,
    max_classes: int = 10,
    per_class: int = 8,
) -> Path:
    """`calibration_figure` written as PNG to `path`."""
    return save_png(
        calibration_figure(
            images, labels, data_config, teacher_logits, class_names, max_classes, per_class
        ),
        path,
    )


def loss_figure(history: dict) -> Figure:
    """A panel per recorded stage: synthesis terms, block losses before/after, distillation."""
    panels = [k for k in ("synthesize", "reconstruct", "distill") if history.get(k)]
    fig = Figure(figsize=(8, 3.2 * max(len(panels), 1)))
    if not panels:
        fig.text(0.5, 0.5, "no losses recorded", ha="center", va="center")
        return fig
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, panels, strict=True):
        if key == "reconstruct":
            _block_bars(ax, history[key])
        else:
            _curves(ax, history[key])
        ax.set_title(
            {
                "synthesize": "Synthesis losses per step",
                "reconstruct": "Block reconstruction loss, before (GPTQ or nearest) and after",
                "distill": "Distillation losses per step",
            }[key],
            fontsize=10,
        )
    fig.tight_layout()
    return fig


def _curves(ax: Axes, records: list[dict]) -> None:
    """Every numeric key but `step` against the step (the record index if steps restart)."""
    steps = [r.get("step") for r in records]
    increasing = all(isinstance(s, (int, float)) for s in steps) and all(
        b > a for a, b in pairwise(steps)
    )
    x = steps if increasing else list(range(len(records)))
    keys = [k for k in records[0] if k != "step" and isinstance(records[0][k], (int, float))]
    values = []
    for k in keys:
        ys = [float(r.get(k, math.nan)) for r in records]
        values += [y for y in ys if not math.isnan(y)]
        ax.plot(x, ys, label=k, linewidth=1)
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    if keys:
        ax.legend(fontsize=8)


def _block_bars(ax: Axes, blocks: dict[str, Sequence[float]]) -> None:
    names = list(blocks)
    before = [float(blocks[n][0]) for n in names]
    after = [float(blocks[n][1]) for n in names]
    pos = list(range(len(names)))
    ax.bar([p - 0.2 for p in pos], before, width=0.4, label="before (GPTQ or nearest rounding)")
    ax.bar([p + 0.2 for p in pos], after, width=0.4, label="after reconstruction")
    if min(before + after) > 0:
        ax.set_yscale("log")
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("block output loss")
    ax.legend(fontsize=8)


def loss_curves(history: dict, path: str | Path) -> Path:
    """`loss_figure` written as PNG to `path`."""
    return save_png(loss_figure(history), path)


def _bits_label(row: dict) -> str:
    abits = row.get("abits")
    return f"W{row['wbits']}A{abits}" if abits is not None else f"W{row['wbits']} float input"


def layer_figure(rows: list[dict]) -> Figure:
    """Horizontal SQNR bars in forward order (first layer on top), coloured by weight bits."""
    fig = Figure(figsize=(8, 1.5 + 0.25 * max(len(rows), 1)))
    if not rows:
        fig.text(0.5, 0.5, "no quantized layers", ha="center", va="center")
        return fig
    ax = fig.subplots()
    wbits = sorted({int(r["wbits"]) for r in rows})
    colours = {b: f"C{i}" for i, b in enumerate(wbits)}
    pos = list(range(len(rows)))
    sqnr = [float(r["sqnr_db"]) for r in rows]
    ax.barh(pos, sqnr, color=[colours[int(r["wbits"])] for r in rows])
    ax.set_yticks(pos)
    ax.set_yticklabels([f"{r['layer']} {_bits_label(r)}" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.legend(
        handles=[Patch(color=c, label=f"{b}-bit weights") for b, c in colours.items()],
        fontsize=8,
        loc="lower right",
    )
    ax.set_xlabel("SQNR (dB) of the layer output vs the FP model")
    ax.set_title(
        "Per-layer SQNR, higher is better (low bars: the layers that lose most)", fontsize=10
    )
    fig.tight_layout()
    return fig


def layer_errors(rows: list[dict], path: str | Path) -> Path:
    """`layer_figure` written as PNG to `path`."""
    return save_png(layer_figure(rows), path)


@torch.no_grad()
def layer_sqnr(
    qmodel: nn.Module,
    fpmodel: nn.Module,
    images: torch.Tensor,
    names: Sequence[str] | None = None,
    batch_size: int = 32,
) -> list[dict]:
    """SQNR in dB of each quantized layer's output against the FP model's, on the same images.

    Both models see the same input, so the error at a layer includes what earlier layers passed
    on: it says where the quantized network drifts from the float one. Batched so only one batch
    of FP activations is held at a time.
    """
    layers = quant_layers(qmodel)
    fp_modules = dict(fpmodel.named_modules())
    wanted = [
        n for n in (names if names is not None else layers) if n in layers and n in fp_modules
    ]
    signal = dict.fromkeys(wanted, 0.0)
    noise = dict.fromkeys(wanted, 0.0)
    fp_out: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda _m, _i, out: fp_out.__setitem__(name, out.detach().double())

    def compare(name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            ref = fp_out.pop(name).to(out.device)
            signal[name] += float(ref.pow(2).sum())
            noise[name] += float((out.detach().double() - ref).pow(2).sum())

        return hook

    handles = [fp_modules[n].register_forward_hook(keep(n)) for n in wanted]
    handles += [layers[n].register_forward_hook(compare(n)) for n in wanted]
    modes = [(m, m.training) for m in (qmodel, fpmodel)]
    try:
        qmodel.eval()
        fpmodel.eval()
        q_dev, fp_dev = (next(m.parameters()).device for m in (qmodel, fpmodel))
        for batch in images.split(batch_size):
            fpmodel(batch.to(fp_dev))
            qmodel(batch.to(q_dev))
    finally:
        for h in handles:
            h.remove()
        for m, was_training in modes:
            m.train(was_training)
    return [
        {
            "layer": n,
            "sqnr_db": round(_db(signal[n], noise[n]), 2),
            "wbits": int(layers[n].weight_quantizer.bits),
            "abits": None
            if layers[n].input_quantizer is None
            else int(layers[n].input_quantizer.bits),
        }
        for n in wanted
    ]


def _db(signal: float, noise: float) -> float:
    if noise <= 0:
        return MAX_SQNR_DB
    if signal <= 0:
        return -MAX_SQNR_DB
    return min(MAX_SQNR_DB, 10 * math.log10(signal / noise))
