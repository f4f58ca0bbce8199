"""`synthesize`: a calibration set from the model alone, by a registered method, round by round.

Each round (one batch) is seeded on its own from the run's seed, so the set does not depend on
whether earlier rounds ran in this process or were read back from a checkpoint: a run resumed from
saved rounds (`store`) gives the same images as one that never stopped.
"""

from __future__ import annotations

import random
import time
from typing import Protocol

import torch
from torch import nn

import dfq.synth.methods  # noqa: F401  (registers the methods)
from dfq.calibration.dataset import CalibrationSet
from dfq.config import config_to_dict
from dfq.device import resolve_device
from dfq.errors import DfqError
from dfq.models.data_config import DataConfig
from dfq.modes import frozen
from dfq.progress import StepBar
from dfq.synth.bn_stats import require_bn
from dfq.synth.registry import Round, get_synthesizer
from dfq.synth.student import Student
from dfq.synth.synth_config import SynthConfig
from dfq.synth.targets import class_targets


class RoundStore(Protocol):
    """Where finished rounds are kept so that an interrupted run can resume (see dfq.run)."""

    def load(self, r: int) -> tuple[Round, dict] | None: ...

    def save(self, r: int, result: Round, state: dict) -> None: ...


def round_seed(seed: int, r: int) -> int:
    return seed * 100_003 + r


def synthesize(
    model: nn.Module,
    cfg: SynthConfig,
    data_config: DataConfig,
    student: Student | nn.Module | None = None,
    progress: bool = True,
    device: str = "auto",
    model_name: str = "",
    store: RoundStore | None = None,
) -> CalibrationSet:
    """A calibration set of `cfg.num_images` images synthesized from `model` alone.

    Args:
        student: when given (the quantized model inside `dfq quantize`), methods that use one
            push images towards where it disagrees with `model` and may train it between rounds
            (a bare module is a student that is never trained).
        device: 'auto', 'cpu' or 'cuda'; the models are moved there for the run and moved back.
        store: finished rounds are saved there and, when present, read back instead of rerun.
    """
    method = get_synthesizer(cfg.method)
    if isinstance(student, nn.Module):
        student = Student(student)
    if method.needs_student and student is None:
        raise DfqError(
            f"synthesis method '{cfg.method}' plays against a student model; give one "
            "(dfq quantize and dfq synthesize make a quantized student)"
        )
    if method.needs_bn:
        require_bn(model, model_name or "the model")
    dev = torch.device(resolve_device(device))
    targets = class_targets(
        cfg.num_images, cfg.batch_size, data_config.num_classes, cfg.class_images, cfg.seed
    )
    start = time.perf_counter()
    rounds: list[Round] = []
    student_log: list[dict[str, float]] = []
    with frozen(model, dev), frozen(None if student is None else student.model, dev):
        synth = method(model, cfg, data_config, student, dev)
        n = synth.num_rounds()
        with StepBar(n * synth.steps_per_round(), "synthesize", enabled=progress) as bar:
            for r, tgt in enumerate(targets.split(cfg.batch_size)):
                saved = store.load(r) if store is not None else None
                if saved is not None:
                    rounds.append(saved[0])
                    synth.load_state_dict(saved[1])
                    bar.step(synth.steps_per_round())
                    continue
                torch.manual_seed(round_seed(cfg.seed, r))
                rng = random.Random(round_seed(cfg.seed, r))
                result = synth.run_round(r, tgt.to(dev), rng, bar)
                result.images = result.images.detach().float().cpu()
                result.labels = result.labels.detach().cpu()
                rounds.append(result)
                gen = torch.Generator().manual_seed(round_seed(cfg.seed, r))
                pool = torch.cat([x.images for x in rounds]).to(dev)
                student_log.append({"round": r, **synth.after_round(pool, gen)})
                if store is not None:
                    store.save(r, result, synth.state_dict())
    return _assemble(
        rounds,
        cfg,
        data_config,
        model_name,
        dev,
        student is not None,
        time.perf_counter() - start,
        student_log,
        synth.data_source(),
    )


def _assemble(
    rounds: list[Round],
    cfg: SynthConfig,
    data_config: DataConfig,
    model_name: str,
    dev: torch.device,
    has_student: bool,
    seconds: float,
    student_log: list[dict[str, float]],
    source: object | None,
) -> CalibrationSet:
    images = torch.cat([r.images for r in rounds])
    labels = torch.cat([r.labels for r in rounds])
    sums: dict[str, float] = {}
    for r in rounds:
        for k, v in r.terms.items():
            sums[k] = sums.get(k, 0.0) + v * len(r.images) / len(images)
    meta = {
        "data_config": data_config.to_dict(),
        "model": model_name,
        "seed": cfg.seed,
        "method": cfg.method,
        "synth": config_to_dict(cfg),
        "final_losses": {k: round(v, 6) for k, v in sums.items()},
        "history": [h for r in rounds for h in r.history],
        "student_updates": student_log,
        "seconds": round(seconds, 3),
        "device": str(dev),
        "torch": torch.__version__,
        "student": has_student,
    }
    if source is not None:
        source.images = images  # the fixed part: range initialization and reconstruction
    return CalibrationSet(images, labels, meta, source=source)
