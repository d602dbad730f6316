"""Stage-2 trainer and accelerate: gradient accumulation over micro-batches of pairs, the cached
adapter switch, the precision reaching the one Accelerator. (Several processes:
test_multiprocess.py.)"""
from __future__ import annotations

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.config import load_config
from science_t2i.training.flux.reference_policy import adapter_disabled
from science_t2i.training.flux.sampler import latent_image_ids, predict_velocity
from science_t2i.training.stage2.config import Stage2Config
from science_t2i.training.stage2.losses import Pair
from science_t2i.training.stage2.trainer import Stage2Trainer
from tiny_dpo import RES, dpo_overrides, flux_dir, prompts  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trainer_for(flux_dir, prompts, out, *extra) -> Stage2Trainer:
    cfg = load_config(Stage2Config, None, dpo_overrides(flux_dir, prompts, out, *extra))
    return Stage2Trainer(cfg).setup()


def _grads(trainer) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in trainer.params]


def test_accumulated_step_uses_the_mean_gradient_of_its_micro_batches(flux_dir, prompts,
                                                                     tmp_path):
    trainer = trainer_for(flux_dir, prompts, tmp_path, "objective.kind=flow-dpo",
                          "train.pairs_per_step=1", "train.grad_accum=3",
                          "optim.max_grad_norm=0")
    batch, _ = trainer.generate_round()
    pairs = [Pair(i, 0, 1, 1.0) for i in range(3)]
    with torch.no_grad():  # a non-zero adapter, so the reference and the policy differ
        for p in trainer.params:
            p.normal_(0, 0.05)
    # each pair's gradient on its own, with the noise/timestep draw it gets in the step
    singles = []
    for pair in pairs:
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.flow_dpo_step(batch, [(0, pair)], torch.ones(1))
        singles.append(_grads(trainer))
    trainer.optimizer.zero_grad(set_to_none=True)
    expected = [sum(g[i] for g in singles) / 3 for i in range(len(trainer.params))]
    assert any(e.abs().max() > 0 for e in expected)

    seen = []
    real_step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (seen.append(_grads(trainer)), real_step(*a, **k))
    metrics = trainer.train_step(batch, [(0, p) for p in pairs])
    assert trainer.step == 1 and len(seen) == 1
    for got, want in zip(seen[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert all(isinstance(v, float) for k, v in metrics.items() if k != "round")


def test_a_round_takes_one_optimizer_step_per_grad_accum_micro_batches(flux_dir, prompts,
                                                                      tmp_path):
    # 6 prompts -> up to 6 pairs, 1 pair per micro-batch, 4 per step -> ceil(pairs / 4) steps
    trainer = trainer_for(flux_dir, prompts, tmp_path, "objective.kind=flow-dpo",
                          "train.pairs_per_step=1", "train.grad_accum=4", "train.rounds=1")
    trainer.run()
    records = trainer.run_log.records()
    n_pairs = next(r["pairs"] for r in records if "pairs" in r)
    steps = [r for r in records if "loss" in r]
    assert n_pairs >= 2
    assert trainer.step == len(steps) == -(-n_pairs // 4)


def test_the_adapter_switch_gives_the_reference(flux_dir, prompts, tmp_path):
    trainer = trainer_for(flux_dir, prompts, tmp_path)
    model = trainer.model
    with torch.no_grad():
        for p in trainer.params:
            p.normal_(0, 0.5)
    g = torch.Generator().manual_seed(0)
    batch, _ = trainer.generate_round()
    cond = batch.conditioning([0, 1], trainer.device)
    x = torch.randn(2, 4, 4, generator=g)
    ids = latent_image_ids(RES // 2, RES // 2)
    with torch.no_grad():
        policy = predict_velocity(model, x, 0.5, cond, ids)
        model.disable_adapters()  # diffusers' own switch
        want = predict_velocity(model, x, 0.5, cond, ids)
        model.enable_adapters()
        with adapter_disabled(model):
            searched = predict_velocity(model, x, 0.5, cond, ids)
        with trainer._reference():
            got = predict_velocity(model, x, 0.5, cond, ids)
        again = predict_velocity(model, x, 0.5, cond, ids)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(searched, want)
    assert not torch.allclose(policy, want, atol=1e-3)
    torch.testing.assert_close(again, policy)  # switched back on


def test_grad_accum_must_be_positive(flux_dir, prompts, tmp_path):
    with pytest.raises(ScienceT2IError, match="train.grad_accum must be >= 1"):
        load_config(Stage2Config, None, dpo_overrides(flux_dir, prompts, tmp_path,
                                                   "train.grad_accum=0"))


def test_mixed_precision_reaches_the_one_accelerator(flux_dir, prompts, tmp_path, monkeypatch):
    # accelerate's process-wide state accepts one precision: the device must be probed without
    # setting one (PartialState), or the bf16 Accelerator is refused on CUDA. CPU stands in
    # for CUDA here by letting bf16 through.
    from accelerate.state import AcceleratorState
    from science_t2i.training.core import accelerator as core
    monkeypatch.setattr(core, "resolve_precision", lambda requested, device: requested)
    AcceleratorState._reset_state(True)
    try:
        trainer = trainer_for(flux_dir, prompts, tmp_path, "train.mixed_precision=bf16")
        assert trainer.accelerator.mixed_precision == "bf16"
        assert next(trainer.model.parameters()).dtype == torch.bfloat16
    finally:
        AcceleratorState._reset_state(True)  # the other tests run in fp32
