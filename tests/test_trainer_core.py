"""The trainer core as every trainer uses it: accelerate's trackers, the progress bars, the
refusals it owns (missing tracker, sharded set-ups), a fresh log per new run."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.config import load_config
from science_t2i.training.core.run_log import RunLog
from science_t2i.training.sft.config import SFTConfig
from science_t2i.training.sft.trainer import SFTTrainer
from science_t2i.training.stage2.config import Stage2Config
from science_t2i.training.stage2.trainer import Stage2Trainer
from tiny_dpo import dpo_overrides, flux_dir, prompts  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SFT_RES = 16   # the smallest SFT resolution


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    from science_t2i.training.core.datasets import write_jsonl_dataset
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (SFT_RES, SFT_RES, 3), dtype=np.uint8))
              for _ in range(3)]
    return write_jsonl_dataset([{"implicit_prompt": "an unripe tomato",
                                 "explicit_image": images[:2]},
                                {"implicit_prompt": "butter on a hot pan",
                                 "explicit_image": images[2:]}],
                               tmp_path_factory.mktemp("data"))


def sft_cfg(flux_dir, data_path, out, *extra) -> SFTConfig:
    return load_config(SFTConfig, None, [
        f"model.path={flux_dir}", f"data.path={data_path}", "data.split=null",
        f"data.resolution={SFT_RES}", f"output_dir={out}", "cache.max_sequence_length=32",
        "train.mixed_precision=fp32", "train.batch_size=2", "train.grad_accum=1",
        "train.max_steps=3", "train.gradient_checkpointing=false", "checkpoint.every=0",
        "log.progress=false", "log.plot_every=0", *extra])


def test_tensorboard_gets_what_the_run_log_gets(flux_dir, data_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    SFTTrainer(sft_cfg(flux_dir, data_path, out, "log.trackers=[tensorboard]",
                       "log.project=tiny")).setup().run()
    events = EventAccumulator(str(out / "tiny"))
    events.Reload()
    logged = [r for r in RunLog(out).records() if "loss" in r]
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    for event, record in zip(events.Scalars("loss"), logged):
        assert event.value == pytest.approx(record["loss"], rel=1e-6)
    assert {"lr", "grad_norm", "sigma_mean"} <= set(events.Tags()["scalars"])


def test_a_tracker_that_is_not_installed_is_refused(flux_dir, data_path, tmp_path,
                                                    monkeypatch):
    import accelerate.tracking
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ScienceT2IError, match="asks for wandb, which is not installed; "
                                              "pip install wandb"):
        SFTTrainer(sft_cfg(flux_dir, data_path, tmp_path, "log.trackers=[wandb]")).setup()
    with pytest.raises(ScienceT2IError, match="unknown tracker.*tensorbord"):
        sft_cfg(flux_dir, data_path, tmp_path, "log.trackers=[tensorbord]")


def test_progress_bars_show_rate_and_eta_and_stage2_shows_its_phases(
        flux_dir, prompts, data_path, tmp_path, monkeypatch, capfd):  # noqa: F811
    monkeypatch.delenv("SCIENCE_T2I_NO_PROGRESS", raising=False)
    import functools

    import tqdm.auto

    # draw every update (tqdm draws at most every 0.1 s, and the tiny runs are faster)
    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(tqdm.auto.tqdm, mininterval=0,
                                                             miniters=1))
    SFTTrainer(sft_cfg(flux_dir, data_path, tmp_path / "sft", "log.progress=true")).setup().run()
    err = capfd.readouterr().err
    # tqdm's "3/3 [elapsed<remaining, rate]"
    assert re.search(r"sft: 100%.*3/3 \[\d+:\d+<\d+:\d+, +[\d.]+(step/s|s/step)", err), \
        err[-2000:]

    cfg = load_config(Stage2Config, None, dpo_overrides(flux_dir, prompts, tmp_path / "dpo",
                                                     "train.rounds=2", "log.progress=true"))
    Stage2Trainer(cfg).setup().run()
    err = capfd.readouterr().err
    assert re.search(r"stage2: 100%.*2/2 \[.*<.*round", err), err[-2000:]
    assert re.search(r"round 1 rollouts: .*24/24 \[.*<.*img", err), err[-2000:]
    assert re.search(r"round 1 training: .*1/1 \[.*<", err), err[-2000:]


def test_a_new_run_in_an_old_folder_starts_a_new_log(flux_dir, data_path, tmp_path):
    out = tmp_path / "run"
    SFTTrainer(sft_cfg(flux_dir, data_path, out)).setup().run()
    SFTTrainer(sft_cfg(flux_dir, data_path, out, "train.max_steps=2")).setup().run()
    assert [r["step"] for r in RunLog(out).records()] == [1, 2]


def test_sharded_setups_are_refused_before_accelerate_fails(flux_dir, data_path, tmp_path,
                                                            monkeypatch):
    # what `accelerate launch --use_fsdp` / `--use_deepspeed` put in the workers' environment
    for env, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED",
                                                         "DeepSpeed")):
        monkeypatch.setenv(env, "true")
        with pytest.raises(ScienceT2IError, match=f"set up for {name}, which the trainers do "
                                                  "not support.*--multi_gpu"):
            SFTTrainer(sft_cfg(flux_dir, data_path, tmp_path)).setup()
        monkeypatch.delenv(env)
