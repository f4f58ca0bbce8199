"""RDSKD at its shipped settings (RdskdConfig defaults), on the tiny model with few iterations."""

import math

import pytest
import torch

from dfq.errors import DfqError
from dfq.synth import Student, SynthConfig, synthesize
from dfq.synth.methods.rdskd import (
    RDSKDSynthesizer,
    diversity_loss,
    entropy_loss,
    increment_penalty,
)
from tests.synth.tiny import MemoryStore, tiny_config, tiny_model

FAST = {"method": "rdskd", "num_images": 12, "batch_size": 8, "log_every": 2, "rdskd": {"iters": 3}}


def make(seed: int = 0, **rdskd) -> RDSKDSynthesizer:
    torch.manual_seed(seed)
    cfg = SynthConfig(method="rdskd", batch_size=8, rdskd=rdskd)
    return RDSKDSynthesizer(
        tiny_model().requires_grad_(False), cfg, tiny_config(), None, torch.device("cpu")
    )


def grads_reach(loss: torch.Tensor, params: list[torch.Tensor]) -> bool:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_penalty_scales_a_rising_term_up_and_a_falling_one_down():
    prev = torch.tensor(2.0)
    rising = increment_penalty(torch.tensor(2.5, requires_grad=True), prev, 5.0)
    falling = increment_penalty(torch.tensor(1.5), prev, 5.0)
    assert math.isclose(rising, math.exp(0.5), rel_tol=1e-6) and not rising.requires_grad
    assert math.isclose(falling, math.exp(-0.5), rel_tol=1e-6)
    assert increment_penalty(torch.tensor(3.0), None, 5.0) == 1.0  # first iteration
    assert math.isclose(
        increment_penalty(torch.tensor(100.0), prev, 5.0), math.exp(5.0), rel_tol=1e-6
    )


def test_penalty_engages_in_the_generator_step():
    synth = make()
    _, _, first = synth.generator_step(synth.latents(8))
    assert all(first[f"p_{k}"] == 1.0 for k in ("onehot", "activation", "entropy"))
    synth.prev["onehot"] = synth.prev["onehot"] - 1.0  # as if the term had risen by 1
    _, _, second = synth.generator_step(synth.latents(8))
    assert second["p_onehot"] > 2.0 and 0.5 < second["p_entropy"] < 2.0


def test_every_term_is_active_and_reaches_the_generator():
    synth = make()
    params = list(synth.generator.parameters())
    _, _, terms = synth.losses(synth.latents(8))
    for name in ("onehot", "activation", "entropy", "diversity"):
        assert synth.weights[name] > 0, name
        assert torch.isfinite(terms[name]) and terms[name] != 0, name
        assert grads_reach(terms[name], params), name
    assert synth.weights["bn"] == 0  # off by default, as in the paper; check it works when on
    synth = make(bn_weight=1.0)
    _, _, terms = synth.losses(synth.latents(8))
    assert terms["bn"] > 0 and grads_reach(terms["bn"], list(synth.generator.parameters()))


def test_entropy_and_diversity_reward_what_they_should():
    even = torch.eye(4).repeat(2, 1) * 5.0  # every class predicted equally often
    one = torch.zeros(8, 4)
    one[:, 0] = 5.0  # every sample in class 0
    assert entropy_loss(even) < entropy_loss(one)
    assert math.isclose(entropy_loss(even), -math.log(4), rel_tol=1e-5)
    z = torch.randn(8, 16)
    same = torch.rand(1, 3, 8, 8).expand(8, -1, -1, -1)
    different = torch.rand(8, 3, 8, 8)
    assert diversity_loss(different, z) < diversity_loss(same, z)


def test_synthesize_alone_is_valid_and_deterministic():
    data, teacher = tiny_config(), tiny_model()

    def run(seed: int, caller_seed: int):
        torch.manual_seed(caller_seed)  # the caller's RNG state must not matter
        return synthesize(teacher, SynthConfig(seed=seed, **FAST), data, progress=False)

    a, b, c = run(1, 10), run(1, 11), run(2, 10)
    lo, hi = data.input_bounds()
    assert a.images.shape == (12, 3, 8, 8)
    assert torch.all(a.images >= lo - 1e-5) and torch.all(a.images <= hi + 1e-5)
    assert torch.equal(a.labels, teacher(a.images).argmax(1))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert {"onehot", "activation", "entropy", "diversity", "bn", "p_onehot"} <= set(
        a.metadata["final_losses"]
    )


def test_student_trains_per_iteration_and_a_resumed_run_matches():
    data, teacher, cfg = tiny_config(), tiny_model(), SynthConfig(**FAST)

    def student() -> Student:
        model = tiny_model(seed=1).requires_grad_(False)
        return Student(model, list(model.parameters()))

    s, full = student(), MemoryStore()
    whole = synthesize(teacher, cfg, data, student=s, progress=False, store=full)
    assert not torch.equal(s.model[0].weight, tiny_model(seed=1)[0].weight)
    assert whole.metadata["final_losses"]["student_kd"] > 0
    resumed = synthesize(
        teacher,
        cfg,
        data,
        student=student(),
        progress=False,
        store=MemoryStore({0: full.rounds[0]}),
    )
    assert torch.equal(whole.images, resumed.images)


def test_terms_that_cannot_be_computed_are_one_line_errors():
    flat = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )  # no BN, no Linear
    with pytest.raises(DfqError, match="activation_weight: 0"):
        synthesize(flat, SynthConfig(**FAST), tiny_config(), progress=False)
    with pytest.raises(DfqError, match="bn_weight: 0"):
        synthesize(
            flat,
            SynthConfig(**{**FAST, "rdskd": {"iters": 1, "bn_weight": 1.0}}),
            tiny_config(),
            progress=False,
        )
