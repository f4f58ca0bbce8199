"""`QuantConfig`: the `quant:` section of a recipe (bits, protocol, range init, fine-tuning
budgets)."""

from __future__ import annotations

from dataclasses import dataclass

from dfq.amp import amp_mode
from dfq.errors import DfqError

PROTOCOLS = ("deploy", "gdfq", "genie")
WEIGHT_INITS = ("mse", "minmax")
ACT_INITS = ("mse", "percentile", "minmax")
WEIGHT_ROUNDINGS = ("nearest", "gptq")
GPTQ_TARGETS = ("weights", "float")
CLIP_EQUALIZATIONS = ("none", "max", "mse")
KD_PARAMS = ("all", "scales")
KD_AUGMENTS = ("shift_flip", "flip")
KD_FEATURE_POINTS = ("stages", "blocks")


@dataclass
class QuantConfig:
    """Defaults are the "deploy" protocol of DESIGN section 2 and the fine-tuning of section 3.

    `first_last_bits`: bits of the first conv and last linear, or "same" as every layer; None
    takes the protocol's own (deploy and genie: 8, gdfq: same).
    """

    wbits: int = 4
    abits: int = 4
    protocol: str = "deploy"
    first_last_bits: int | str | None = None
    weight_init: str = "mse"
    act_init: str = "mse"
    act_percentile: float = 99.99
    # even out the channel ranges of linear residual streams before quantizing them (equalize.py)
    equalize_streams: bool = False
    # scale up the small channels of ReLU / ReLU6 outputs read by depthwise convs (equalize.py):
    # "max" keeps the float model, "mse" gives each channel its own clipping point; "none"
    equalize_clips: str = "none"
    calib_batch_size: int = 64
    # weight rounding before reconstruction: "gptq" rounds against each layer's input Hessian
    weight_rounding: str = "gptq"
    gptq_damp: float = 0.01  # of the mean Hessian diagonal
    gptq_images: int = 64  # calibration images the Hessians are estimated on
    # what GPTQ keeps: "weights", each layer's output with float weights on its quantized inputs;
    # "float", the FP model's output (also corrects what quantizing the inputs changed)
    gptq_target: str = "weights"
    gptq_fit_damp: float = 0.01  # "float": the least-squares fit's pull towards the FP weights
    # keep GPTQ's weights before rounding (same codes): AdaRound then starts from how close each
    # rounding call was instead of from settled grid points it cannot move off in a short budget
    gptq_soft: bool = True
    # a layer whose output only a ReLU / ReLU6 reads counts only the output positions it passes
    # (inside (0, top)), one Hessian per output channel: AdaRound's objective through the activation
    gptq_active: bool = False
    # block reconstruction (BRECQ / QDrop)
    reconstruct: bool = True
    recon_iters: int = 300  # per block
    recon_batch_size: int = 32
    recon_lr_round: float = 1e-2  # AdaRound soft bits
    recon_lr_act: float = 4e-4  # activation step sizes
    round_reg_weight: float = 0.01
    round_warmup: float = 0.2  # share of iterations before the rounding regularizer starts
    qdrop_prob: float = 0.5
    # network distillation
    kd_iters: int = 300
    kd_batch_size: int = 64
    kd_lr: float = 1e-5
    kd_params: str = "scales"  # "scales": step sizes and biases; "all": also weights (STE)
    # learning rate of each activation step size relative to its value after range init (Adam
    # moves a parameter about lr a step, so at `kd_lr` a step of 2 hardly moves); 0: `kd_lr`
    kd_act_scale_lr: float = 0.0
    kd_temperature: float = 4.0
    kd_augment: str = "shift_flip"  # or "flip": teacher logits cached for both orientations
    kd_at_8bit: bool = False  # distill when every layer is 8 bit (gained nothing on train-5k)
    kd_feature_weight: float = 0.0  # stage outputs' normalized distance to FP's (feature_kd)
    kd_feature_points: str = "stages"  # each resolution stage's last block, or "blocks": each
    # a fixed set's images resized to this longer side for all but the last `kd_full_res_iters`
    # steps (the teacher's outputs cached at both sizes); 0: every step at full resolution
    kd_low_res: int = 0
    kd_full_res_iters: int = 0
    class_images: int = 0  # images per class in a distillation batch (M); 0: automatic
    relation_weight: float = 0.1
    relation_margin: float = 0.2
    log_every: int = 10
    amp: str = "auto"  # bf16 autocast of the forward passes on CUDA (quantizers in float32)

    def __post_init__(self) -> None:
        for name in ("wbits", "abits"):
            bits = getattr(self, name)
            if not isinstance(bits, int) or not 2 <= bits <= 8:
                raise DfqError(f"{name} must be an integer from 2 to 8, got {bits!r}")
        if self.first_last_bits not in (None, "same") and (
            not isinstance(self.first_last_bits, int) or not 2 <= self.first_last_bits <= 8
        ):
            raise DfqError(f"first_last_bits must be 2..8 or 'same', got {self.first_last_bits!r}")
        _choice("protocol", self.protocol, PROTOCOLS)
        _choice("kd_augment", self.kd_augment, KD_AUGMENTS)
        _choice("kd_feature_points", self.kd_feature_points, KD_FEATURE_POINTS)
        self.amp = amp_mode(self.amp)
        if self.log_every < 1 or self.class_images < 0 or self.class_images == 1:
            raise DfqError("log_every must be >= 1 and class_images 0 (automatic) or >= 2")
        _choice("weight_init", self.weight_init, WEIGHT_INITS)
        _choice("act_init", self.act_init, ACT_INITS)
        _choice("weight_rounding", self.weight_rounding, WEIGHT_ROUNDINGS)
        _choice("gptq_target", self.gptq_target, GPTQ_TARGETS)
        if self.gptq_active and self.gptq_target != "weights":
            raise DfqError("gptq_active works with gptq_target 'weights' only; set one of them")
        _choice("equalize_clips", self.equalize_clips, CLIP_EQUALIZATIONS)
        _choice("kd_params", self.kd_params, KD_PARAMS)
        if not 50.0 < self.act_percentile <= 100.0:
            raise DfqError(f"act_percentile must be in (50, 100], got {self.act_percentile}")
        for name in ("calib_batch_size", "recon_batch_size", "kd_batch_size", "gptq_images"):
            if getattr(self, name) < 1:
                raise DfqError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("recon_iters", "kd_iters", "kd_low_res", "kd_full_res_iters"):
            if getattr(self, name) < 0:
                raise DfqError(f"{name} must be 0 or more, got {getattr(self, name)}")
        positive = ("recon_lr_round", "recon_lr_act", "kd_lr", "kd_temperature")
        for name in (*positive, "gptq_damp", "gptq_fit_damp"):
            if not getattr(self, name) > 0:
                raise DfqError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("qdrop_prob", "round_warmup"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise DfqError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if min(self.round_reg_weight, self.relation_weight, self.relation_margin) < 0:
            raise DfqError("round_reg_weight, relation_weight and relation_margin must be >= 0")
        if self.kd_full_res_iters > self.kd_iters:
            raise DfqError(
                f"kd_full_res_iters ({self.kd_full_res_iters}) cannot exceed "
                f"kd_iters ({self.kd_iters})"
            )
        for name in ("kd_feature_weight", "kd_act_scale_lr"):
            if getattr(self, name) < 0:
                raise DfqError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def distills(self) -> bool:
        """Whether distillation runs: `kd_iters` > 0 and, unless `kd_at_8bit`, some layer below
        8 bits."""
        edge = self.edge_bits
        all_8bit = min(self.wbits, self.abits, 8 if edge == "same" else edge) >= 8
        return self.kd_iters > 0 and (self.kd_at_8bit or not all_8bit)

    @property
    def edge_bits(self) -> int | str:
        """Bits of the first conv and last linear ("same": like every layer), protocol default
        resolved."""
        if self.first_last_bits is None:
            return "same" if self.protocol == "gdfq" else 8
        return self.first_last_bits


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DfqError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
