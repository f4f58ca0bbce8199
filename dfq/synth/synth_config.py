"""`SynthConfig`: every knob of calibration synthesis, validated once so the methods can trust it.

The common fields drive the BN-statistics inversion that the `bn` and `rgal` methods share; DFAD
and RDSKD keep their own settings in the nested `dfad:` and `rdskd:` sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dfq.amp import amp_mode
from dfq.errors import DfqError

PARAMS = ("generator", "pixels")
DIRECTIONS = ("swapped", "standard")
RELATION_LABELS = ("argmax", "target")
RELATION_FEATURES = ("stages", "penultimate")
DIVERSITY_REFERENCES = ("latent", "teacher")
CLI_FLAGS = ("num_images", "batch_size", "iters", "seed")


@dataclass
class DfadConfig:
    """DFAD (Fang et al. 2019): a generator and the student play a min-max game on the teacher-
    student mean absolute error of logits; `bn_weight` adds BN statistics (ZAQ-style)."""

    iters: int = 200  # game iterations per round (batch of the set)
    student_steps: int = 5  # imitation steps per generation step (the paper's k)
    lr_generator: float = 1e-3
    lr_student: float = 1e-4
    bn_weight: float = 1.0

    def __post_init__(self) -> None:
        _at_least("dfad.iters", self.iters, 1)
        _at_least("dfad.student_steps", self.student_steps, 1)
        _positive(self, ("lr_generator", "lr_student"), "dfad.")
        _non_negative(self, ("bn_weight",), "dfad.")


@dataclass
class RdskdConfig:
    """RDSKD (Han et al. 2021): authenticity, class diversity and sample diversity, with
    exponentially penalized loss increments.

    Unit weights on the one-hot, entropy and diversity terms as in the authors' released code
    (github PengchaoHan/RDSKD); the activation term is DAFL's, at DAFL's weight 0.1. The
    diversity term compares sample distances with latent distances (`'latent'`, mode seeking) or,
    as the released code does, with distances between the teacher's softmax outputs
    (`'teacher'`). `max_increment` caps the exponent of the penalty (a numerical guard, not in
    the paper: exp(5) ~ 148).
    """

    iters: int = 200  # generator iterations per round
    student_steps: int = 1  # student KD steps per generator iteration (when a student is given)
    lr_generator: float = 1e-3
    lr_student: float = 1e-4
    onehot_weight: float = 1.0
    activation_weight: float = 0.1
    entropy_weight: float = 1.0
    diversity_weight: float = 1.0
    bn_weight: float = 0.0
    diversity_reference: str = "latent"
    max_increment: float = 5.0

    def __post_init__(self) -> None:
        _at_least("rdskd.iters", self.iters, 1)
        _at_least("rdskd.student_steps", self.student_steps, 0)
        _positive(self, ("lr_generator", "lr_student", "max_increment"), "rdskd.")
        _non_negative(
            self,
            (
                "onehot_weight",
                "activation_weight",
                "entropy_weight",
                "diversity_weight",
                "bn_weight",
            ),
            "rdskd.",
        )
        _one_of("rdskd.diversity_reference", self.diversity_reference, DIVERSITY_REFERENCES)


@dataclass
class SynthConfig:
    """Synthesis settings; a recipe's `synth:` section maps onto these fields one to one.

    `method` names a registered synthesizer (`bn`, `rgal`, `dfad`, `rdskd`). Loss weights follow
    DESIGN.md section 1 (BN 1, class prior 1, relation 0.1, adversarial 1);
    `relation_direction='swapped'` is the RGAL paper's synthesis direction (push positives away,
    pull negatives closer), 'standard' the direction its released code minimizes. Negatives are
    sampled by distances between L2-normalized teacher logits; `density_ratio` caps how much more
    likely one in-window negative may be than another (1 = uniform over the window).
    `low_res` > 0 optimizes at that side length for all but the last `full_res_iters` steps.
    `student_steps` > 0 trains the student (when one is given) that many distillation steps on the
    images made so far after each batch, as RGAL alternates synthesis and student training.
    `bn_tail_z` > 0 (the `bn` and `rgal` methods) adds to each BN layer's statistics loss the
    squared excess of its inputs beyond that many running standard deviations: mean and variance
    leave the tails free, and the set's extremes are what MinMax calibration turns into grids.
    """

    method: str = "rgal"
    num_images: int = 512
    batch_size: int = 256
    iters: int = 400
    param: str = "generator"
    lr_generator: float = 1e-3
    lr_latent: float = 1e-2
    lr_pixels: float = 0.1
    betas: tuple[float, float] = (0.5, 0.999)
    latent_dim: int = 256
    generator_width: int = 64
    reinit_generator: bool = True
    bn_weight: float = 1.0
    first_bn_weight: float = 1.0
    bn_tail_z: float = 0.0  # > 0: penalize BN inputs beyond this many running std (bn_tail_loss)
    ce_weight: float = 1.0
    class_images: int = 0  # images per class in a batch (M); 0: as many as balance gives, >= 2
    relation: bool = True
    relation_weight: float = 0.1
    relation_margin: float = 0.2
    relation_direction: str = "swapped"
    relation_labels: str = "argmax"
    relation_features: str = "stages"
    focal_window: tuple[float, float] = (0.5, 1.0)
    density_ratio: float = 10.0
    adv_weight: float = 1.0
    student_steps: int = 0
    student_batch_size: int = 64
    student_lr: float = 1e-4
    tv_weight: float = 0.0
    l2_weight: float = 0.0
    jitter: int = 2
    flip: bool = True
    swing: bool = True
    low_res: int = 0
    full_res_iters: int = 0
    keep_best: bool = True
    max_retries: int = 2
    seed: int = 0
    amp: str = "auto"
    log_every: int = 10
    dfad: DfadConfig = field(default_factory=DfadConfig)
    rdskd: RdskdConfig = field(default_factory=RdskdConfig)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        self.focal_window = tuple(float(w) for w in self.focal_window)
        if isinstance(self.dfad, dict):
            self.dfad = DfadConfig(**self.dfad)
        if isinstance(self.rdskd, dict):
            self.rdskd = RdskdConfig(**self.rdskd)
        for name in (
            "num_images",
            "batch_size",
            "iters",
            "latent_dim",
            "generator_width",
            "log_every",
            "student_batch_size",
        ):
            _at_least(name, getattr(self, name), 1)
        for name in (
            "jitter",
            "max_retries",
            "seed",
            "class_images",
            "student_steps",
            "low_res",
            "full_res_iters",
        ):
            _at_least(name, getattr(self, name), 0)
        if self.class_images == 1:
            raise DfqError(
                "class_images must be 0 (automatic) or at least 2: a triplet needs two "
                "images of one class"
            )
        if self.full_res_iters > self.iters:
            raise DfqError(
                f"full_res_iters ({self.full_res_iters}) cannot exceed iters ({self.iters})"
            )
        _positive(self, ("lr_generator", "lr_latent", "lr_pixels", "student_lr"))
        _non_negative(
            self,
            (
                "bn_weight",
                "first_bn_weight",
                "bn_tail_z",
                "ce_weight",
                "relation_weight",
                "relation_margin",
                "adv_weight",
                "tv_weight",
                "l2_weight",
            ),
        )
        if not self.density_ratio >= 1.0:
            raise DfqError(f"density_ratio must be at least 1, got {self.density_ratio}")
        if not isinstance(self.method, str) or not self.method:
            raise DfqError(f"method must be a synthesizer name, got {self.method!r}")
        _one_of("param", self.param, PARAMS)
        self.amp = amp_mode(self.amp)
        _one_of("relation_direction", self.relation_direction, DIRECTIONS)
        _one_of("relation_labels", self.relation_labels, RELATION_LABELS)
        _one_of("relation_features", self.relation_features, RELATION_FEATURES)
        lo, hi = self.focal_window if len(self.focal_window) == 2 else (1.0, 0.0)
        if not 0 <= lo < hi <= 2:
            raise DfqError(
                f"focal_window must be two distances 0 <= lo < hi <= 2, got {self.focal_window}"
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise DfqError(f"betas must be two numbers in [0, 1), got {self.betas}")


def _at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        flag = f" (--{name.replace('_', '-')})" if name in CLI_FLAGS else ""
        raise DfqError(f"{name} must be an integer >= {low}, got {value!r}{flag}")


def _positive(cfg: object, names: tuple[str, ...], prefix: str = "") -> None:
    for name in names:
        if not getattr(cfg, name) > 0:
            raise DfqError(f"{prefix}{name} must be positive, got {getattr(cfg, name)}")


def _non_negative(cfg: object, names: tuple[str, ...], prefix: str = "") -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise DfqError(f"{prefix}{name} must be zero or positive, got {getattr(cfg, name)}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DfqError(f"unknown {name} '{value}'; use one of {', '.join(choices)}")
