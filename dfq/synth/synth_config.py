"""`SynthConfig`: every knob of calibration synthesis, validated once so the loop can trust it."""
from __future__ import annotations

from dataclasses import dataclass

from dfq.errors import DfqError

METHODS = ("generator", "pixels")
AMP_MODES = ("auto", "bf16", "off")
DIRECTIONS = ("swapped", "standard")
RELATION_LABELS = ("argmax", "target")
CLI_FLAGS = ("num_images", "batch_size", "iters", "seed")


@dataclass
class SynthConfig:
    """Synthesis settings; a recipe's `synth:` section maps onto these fields one to one.

    Loss weights follow DESIGN.md section 1 (BN 1, class prior 1, relation 0.1, adversarial 1);
    `relation_direction='swapped'` is the RGAL paper's synthesis direction (push positives away,
    pull negatives closer), 'standard' the direction its released code minimizes.
    """

    num_images: int = 512
    batch_size: int = 256
    iters: int = 400
    method: str = "generator"
    lr_generator: float = 1e-3
    lr_latent: float = 1e-2
    lr_pixels: float = 0.1
    betas: tuple[float, float] = (0.5, 0.999)
    latent_dim: int = 256
    generator_width: int = 64
    reinit_generator: bool = True
    bn_weight: float = 1.0
    first_bn_weight: float = 1.0
    ce_weight: float = 1.0
    relation: bool = True
    relation_weight: float = 0.1
    relation_margin: float = 0.2
    relation_direction: str = "swapped"
    relation_labels: str = "argmax"
    focal_window: tuple[float, float] = (0.5, 1.0)
    adv_weight: float = 1.0
    tv_weight: float = 0.0
    l2_weight: float = 0.0
    jitter: int = 2
    flip: bool = True
    swing: bool = True
    keep_best: bool = True
    max_retries: int = 2
    seed: int = 0
    amp: str = "auto"
    log_every: int = 10

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        self.focal_window = tuple(float(w) for w in self.focal_window)
        for name in ("num_images", "batch_size", "iters", "latent_dim", "generator_width", "log_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("jitter", "max_retries", "seed"):
            _at_least(name, getattr(self, name), 0)
        for name in ("lr_generator", "lr_latent", "lr_pixels"):
            if not getattr(self, name) > 0:
                raise DfqError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("bn_weight", "first_bn_weight", "ce_weight", "relation_weight",
                     "relation_margin", "adv_weight", "tv_weight", "l2_weight"):
            if getattr(self, name) < 0:
                raise DfqError(f"{name} must be zero or positive, got {getattr(self, name)}")
        _one_of("method", self.method, METHODS)
        _one_of("amp", self.amp, AMP_MODES)
        _one_of("relation_direction", self.relation_direction, DIRECTIONS)
        _one_of("relation_labels", self.relation_labels, RELATION_LABELS)
        lo, hi = self.focal_window if len(self.focal_window) == 2 else (1.0, 0.0)
        if not 0 <= lo < hi <= 2:
            raise DfqError(
                f"focal_window must be two distances 0 <= lo < hi <= 2, got {self.focal_window}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise DfqError(f"betas must be two numbers in [0, 1), got {self.betas}")


def _at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        flag = f" (--{name.replace('_', '-')})" if name in CLI_FLAGS else ""
        raise DfqError(f"{name} must be an integer >= {low}, got {value!r}{flag}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DfqError(f"unknown {name} '{value}'; use one of {', '.join(choices)}")
