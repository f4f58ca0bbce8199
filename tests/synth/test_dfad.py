"""DFAD at its shipped settings (DfadConfig defaults), on the tiny model with few iterations."""

import pytest
import torch

from dfq.errors import DfqError
from dfq.modes import trainable
from dfq.synth import Student, SynthConfig, synthesize
from dfq.synth.bn_stats import BNStatHooks
from dfq.synth.methods.dfad import DFADSource, DFADSynthesizer, discrepancy, sample
from tests.synth.tiny import MemoryStore, tiny_config, tiny_model

FAST = {"method": "dfad", "num_images": 12, "batch_size": 8, "log_every": 2, "dfad": {"iters": 3}}


def student(seed: int = 1) -> Student:
    """A second tiny model (other weights and BN statistics) whose every parameter trains."""
    model = tiny_model(seed=seed).requires_grad_(False)
    return Student(model, list(model.parameters()))


def game(seed: int = 0) -> tuple[DFADSynthesizer, torch.nn.Module, Student]:
    torch.manual_seed(seed)
    teacher = tiny_model().requires_grad_(False)
    s = student()
    cfg = SynthConfig(method="dfad", batch_size=8)  # the shipped dfad section
    return DFADSynthesizer(teacher, cfg, tiny_config(), s, torch.device("cpu")), teacher, s


def nonzero_grads(loss: torch.Tensor, params: list[torch.Tensor]) -> bool:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_every_term_is_active_and_reaches_what_it_optimizes():
    synth, teacher, s = game()
    assert synth.cfg.dfad.bn_weight > 0 and synth.cfg.dfad.student_steps == 5
    g_params = list(synth.generator.parameters())
    z = synth.latents(8)
    with BNStatHooks(teacher) as hooks:
        x = tiny_config().normalize(synth.generator(z))
        mae_g = discrepancy(s.model(x), teacher(x))
        bn = hooks.loss()
    for term in (mae_g, bn):
        assert torch.isfinite(term) and term > 0
        assert nonzero_grads(term, g_params)
    with trainable(s.params):
        mae_s = discrepancy(s.model(x.detach()), teacher(x.detach()))
        assert torch.isfinite(mae_s) and mae_s > 0 and nonzero_grads(mae_s, s.params)


def test_generator_step_raises_and_student_step_lowers_the_mae():
    synth, teacher, s = game()
    z = synth.latents(8)

    def mae() -> float:
        with torch.no_grad():
            x = sample(synth.generator, z, tiny_config())
            return float(discrepancy(s.model(x), teacher(x)))

    before = mae()
    synth.generation_step(z)
    raised = mae()
    synth.imitation_step(z)
    assert raised > before and mae() < raised


def test_synthesize_gives_valid_deterministic_images_labelled_by_the_teacher():
    data, teacher = tiny_config(), tiny_model()

    def run(seed: int, caller_seed: int):
        s = student()
        torch.manual_seed(caller_seed)  # the caller's RNG state must not matter
        return synthesize(teacher, SynthConfig(seed=seed, **FAST), data, student=s, progress=False)

    runs = [run(1, 10), run(1, 11), run(2, 10)]
    a = runs[0]
    lo, hi = data.input_bounds()
    assert a.images.shape == (12, 3, 8, 8)
    assert torch.all(a.images >= lo - 1e-5) and torch.all(a.images <= hi + 1e-5)
    assert torch.equal(a.labels, teacher(a.images).argmax(1))
    assert torch.equal(a.images, runs[1].images) and not torch.equal(a.images, runs[2].images)
    assert set(a.metadata["final_losses"]) == {"mae_student", "mae_generator", "bn"}
    assert [h["step"] for h in a.metadata["history"]][:3] == [2, 3, 5]


def test_resumed_run_gives_the_same_images():
    data, teacher = tiny_config(), tiny_model()
    cfg = SynthConfig(**FAST)
    full = MemoryStore()
    whole = synthesize(teacher, cfg, data, student=student(), progress=False, store=full)
    assert sorted(full.rounds) == [0, 1]
    resumed = synthesize(
        teacher,
        cfg,
        data,
        student=student(),
        progress=False,
        store=MemoryStore({0: full.rounds[0]}),
    )
    assert torch.equal(whole.images, resumed.images)


def test_without_a_student_is_a_one_line_error():
    with pytest.raises(DfqError, match="plays against a student") as e:
        synthesize(tiny_model(), SynthConfig(**FAST), tiny_config(), progress=False)
    assert "\n" not in str(e.value)


def test_data_source_makes_fresh_batches_after_a_generator_step():
    teacher, s = tiny_model(), student()
    calib = synthesize(teacher, SynthConfig(**FAST), tiny_config(), student=s, progress=False)
    source = calib.source
    assert isinstance(source, DFADSource) and torch.equal(source.images, calib.images)
    before = [p.detach().clone() for p in source.generator.parameters()]
    with trainable(s.params):  # as inside dfq.quant.distill
        x, logits = source.batch(5, s.model, teacher, 0, torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 8, 8) and logits.shape == (5, 4) and not logits.requires_grad
    assert torch.allclose(logits, teacher(x))
    assert any(
        not torch.equal(a, b) for a, b in zip(before, source.generator.parameters(), strict=True)
    )
    assert all(p.grad is None for p in s.params)  # the generator step leaves the student alone
