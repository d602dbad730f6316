"""Memory tiers (memory=80gb|24gb|16gb|12gb|8gb): the settings they fill, the planned peak
they print, the tiers they refuse; and the plan's live-bytes counter against known tensors."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.config import load_config
from science_t2i.training.flux.memory_tiers import (PLAN_RESOLUTIONS, TIERS, load_plan,
                                                     planned_peak, tier_settings)
from science_t2i.training.sft.config import SFTConfig
from science_t2i.training.stage2.config import Stage2Config
from science_t2i.training.stage2.trainer import Stage2Trainer
from tiny_dpo import dpo_overrides, flux_dir, prompts  # noqa: F401  (shared fixtures)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_a_tier_fills_what_the_user_left_out():
    cfg = load_config(SFTConfig, None, ["memory=16gb"])
    assert (cfg.model.base, cfg.train.batch_size, cfg.train.gradient_checkpointing) == \
        ("8bit", 1, True)
    # the effective batch stays the paper's 4 x 8
    assert cfg.train.grad_accum == 32
    mine = load_config(SFTConfig, None, ["memory=16gb", "model.base=nf4",
                                         "train.grad_accum=4"])
    assert (mine.model.base, mine.train.batch_size, mine.train.grad_accum) == ("nf4", 1, 4)
    s2 = load_config(Stage2Config, None, ["memory=12gb", "rollout.batch_size=2"])
    assert (s2.model.base, s2.rollout.batch_size, s2.train.pairs_per_step,
            s2.reward.dtype) == ("nf4", 2, 1, "auto")
    plain = load_config(SFTConfig, None, [])
    assert (plain.memory, plain.model.base, plain.train.batch_size) == (None, "bf16", 4)


def test_a_tier_from_a_config_file_and_an_unknown_tier(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("memory: 24gb\ntrain:\n  batch_size: 3\n")
    cfg = load_config(SFTConfig, f, [])
    assert (cfg.model.base, cfg.train.batch_size, cfg.train.grad_accum) == ("8bit", 3, 11)
    with pytest.raises(ScienceT2IError, match=r"memory must be one of 80gb, 24gb, 16gb.*'6gb'"):
        load_config(SFTConfig, None, ["memory=6gb"])


def test_the_plan_covers_every_tier_and_interpolates_in_tokens():
    rows = load_plan()["rows"]
    for tier in TIERS:
        for trainer in ("sft", "stage2"):
            bases = {r["base"] for r in rows if r["tier"] == tier and r["trainer"] == trainer}
            want = tier_settings(tier, trainer)["model.base"]
            assert bases == ({"int8", "fp8"} if want == "8bit" else {want})
            for res in PLAN_RESOLUTIONS:
                row = max(r["peak_gib"] for r in rows if r["tier"] == tier
                          and r["trainer"] == trainer and r["resolution"] == res)
                assert planned_peak(trainer, tier, res) == pytest.approx(row)
    lo, hi = planned_peak("sft", "16gb", 512), planned_peak("sft", "16gb", 1024)
    # 768 px: 2304 image tokens, between 1024 and 4096
    assert planned_peak("sft", "16gb", 768) == pytest.approx(lo + (hi - lo) * 1280 / 3072)
    # the targets at 512 px
    assert planned_peak("sft", "16gb", 512) <= 16 and planned_peak("sft", "12gb", 512) <= 10
    assert planned_peak("stage2", "16gb", 512) <= 16
    assert planned_peak("stage2", "12gb", 512) <= 12


def test_a_tier_that_cannot_fit_is_refused_before_any_work(flux_dir, prompts, tmp_path):
    cfg = load_config(Stage2Config, None, dpo_overrides(flux_dir, prompts, tmp_path / "run",
                                                        "memory=8gb", "rollout.resolution=512"))
    with pytest.raises(ScienceT2IError, match=r"memory=8gb: stage2 at 512 px is planned at "
                                              r"[\d.]+ GiB, more than a 8 GB card.*12gb"):
        Stage2Trainer(cfg).setup()
    assert not (tmp_path / "run").exists()


def test_the_tier_line_is_logged_with_the_settings_changed_from_it(flux_dir, prompts,
                                                                  tmp_path, caplog):
    cfg = load_config(Stage2Config, None, dpo_overrides(flux_dir, prompts, tmp_path / "run",
                                                        "memory=24gb", "train.rounds=1"))
    with caplog.at_level(logging.INFO):
        trainer = Stage2Trainer(cfg).setup()
    assert "memory=24gb: train.gradient_checkpointing=True, model.base=8bit" in caplog.text
    # the tests' overrides (rollout and pair batch sizes, gradient checkpointing off) differ
    assert "changed from the tier: train.gradient_checkpointing=False" in caplog.text
    assert trainer.base == "int8"   # 8bit without fp8 hardware


def _memory_model():
    spec = importlib.util.spec_from_file_location("memory_model", BENCHMARKS / "memory_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_live_bytes_follow_known_allocations_and_frees():
    mm = _memory_model()
    weight = torch.zeros(1000)
    with mm.LiveBytes([weight]) as live:
        a = torch.ones(256, 256)            # 256 KiB
        b = a * 2                           # 256 KiB more
        view = weight.view(10, 100).t()     # a view of an existing storage: nothing new
        del a
        c = torch.ones(64, 64, dtype=torch.bfloat16)   # 8 KiB
        assert live.current == 256 * 1024 + 8 * 1024 - 0   # a freed
    assert live.peak == 2 * 256 * 1024 and view.shape == (100, 10)
    del b, c


def test_the_fake_count_equals_the_count_on_real_tensors():
    """The same small FLUX step counted on fake and on real tensors (fp32)."""
    mm = _memory_model()
    small = dict(mm.FLUX_DEV, num_layers=1, num_single_layers=1, num_attention_heads=2,
                 joint_attention_dim=256, pooled_projection_dim=64)
    kw = dict(batch=1, resolution=128, train=True, config=small, dtype=torch.float32, text=32)
    fake = mm.transformer_step_peak(**kw)
    real = mm.transformer_step_peak(fake=False, **kw)
    # rank 16 on 256 -> 256 layers: to_q, to_k, to_v, to_out.0 of the double block, to_q,
    # to_k, to_v of the single block (its output is proj_out)
    assert fake["lora_params"] == real["lora_params"] == 16 * (256 + 256) * (4 + 3)
    assert fake["peak"] == real["peak"] > 0
