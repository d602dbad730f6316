"""Every trainer on two real processes: ``accelerate launch --multi_gpu --num_processes 2``
(torchrun, gloo on the CPU) on the tiny models.

For SFT, stage 2 and the SciScore trainer:
- two processes train what one process with twice the accumulation trains (same global batch,
  same seed): final weights within 1e-5, and DDP all-reduces each trained gradient exactly
  once per optimizer step (the accumulation runs under no_sync);
- a two-process run SIGKILLed while one process is half-way through writing its part of a
  checkpoint resumes from the checkpoint before, and ends bitwise equal to the uninterrupted
  run; resuming it with another number of processes is refused.
Also: stage-2 rollouts of two processes on shared ComfyUI servers, and a sharded (FSDP)
launch refused with its reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import launch
import numpy as np
import pytest
import torch
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.checkpoints import CheckpointManager
from science_t2i.training.core.config import load_config, save_config
from science_t2i.training.core.run_log import RunLog

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 6          # every run: 6 optimizer steps, a checkpoint every 2


def _image(seed: int, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _lora(out: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(out / name))


@dataclass
class Case:
    """A trainer, its tiny set-up, the overrides of its 2-process run and of the 1-process run
    with the same global batch, and how to read a run's final weights."""
    command: str
    config: Callable[[Path, Path, tuple[str, ...]], Any]   # (work dir, output dir, extra)
    two: tuple[str, ...]
    one: tuple[str, ...]
    weights: Callable[[Path], dict[str, torch.Tensor]]
    trained: Callable[[dict[str, torch.Tensor]], int]       # numel DDP all-reduces per step
    train: Callable[[Any, bool], Any]


def _sft_case() -> Case:
    from science_t2i.training.sft.config import SFTConfig
    from science_t2i.training.sft.trainer import train_sft

    def build(work: Path) -> None:
        from science_t2i.training.core.datasets import write_jsonl_dataset
        from tiny_flux import build_tiny_flux_pipeline
        build_tiny_flux_pipeline(work / "flux")
        write_jsonl_dataset([
            {"implicit_prompt": ["an unripe tomato", "a tomato picked too early"],
             "explicit_image": [_image(0, (40, 48)), _image(1)]},
            {"implicit_prompt": "butter on a hot pan", "explicit_image": [_image(2, (36, 32))]},
            {"implicit_prompt": "a rusty nail", "explicit_image": [_image(3), _image(4)]}],
            work / "data")

    def config(work: Path, out: Path, extra: tuple[str, ...]) -> SFTConfig:
        if not (work / "flux").is_dir():
            build(work)
        return load_config(SFTConfig, None, [
            f"model.path={work / 'flux'}", f"data.path={work / 'data' / 'data.jsonl'}",
            "data.split=null", "data.resolution=32", f"output_dir={out}",
            f"cache.dir={work / 'cache'}", "cache.max_sequence_length=32",
            "train.mixed_precision=fp32", "train.batch_size=2", f"train.max_steps={STEPS}",
            "train.gradient_checkpointing=true", "optim.lr=1e-3", "optim.warmup_steps=2",
            "checkpoint.every=2", "checkpoint.keep_last=0", "log.progress=false",
            "log.plot_every=0", *extra])

    return Case("sft", config, ("train.grad_accum=2",), ("train.grad_accum=4",),
                lambda out: _lora(out, "science_t2i_sft.safetensors"),
                lambda w: sum(t.numel() for t in w.values()),
                lambda cfg, resume: train_sft(cfg, resume=resume))


def _dpo_case() -> Case:
    from science_t2i.training.stage2.config import Stage2Config
    from science_t2i.training.stage2.trainer import train_stage2
    from tiny_dpo import build_bright_flux, dpo_overrides, write_prompts

    def config(work: Path, out: Path, extra: tuple[str, ...]) -> Stage2Config:
        if not (work / "flux").is_dir():
            build_bright_flux(work / "flux")
            write_prompts(work / "prompts.json")
        # 2 rounds of 6 prompts (3 per process), 2 pairs per optimizer step: 6 steps
        return load_config(Stage2Config, None, dpo_overrides(
            work / "flux", work / "prompts.json", out, "objective.kind=oft",
            "objective.timestep_fraction=0.5", "rollout.steps=4", "train.rounds=2",
            "train.pairs_per_step=1", "train.gradient_checkpointing=true", "optim.lr=1e-2",
            "checkpoint.every=2",
            "checkpoint.keep_last=0", *extra))

    return Case("dpo", config, ("train.grad_accum=1",), ("train.grad_accum=2",),
                lambda out: _lora(out, "science_t2i_oft.safetensors"),
                lambda w: sum(t.numel() for t in w.values()),
                lambda cfg, resume: train_stage2(cfg, resume=resume))


def _sciscore_case() -> Case:
    from science_t2i.training.sciscore import trainer as ts

    def config(work: Path, out: Path, extra: tuple[str, ...]) -> Any:
        from tiny_clip import build_tiny_clip
        from tiny_science_scenes import write_science_dataset
        if not (work / "clip").is_dir():
            build_tiny_clip(work / "clip", image_size=32, seed=0)
            write_science_dataset(work / "train", 10, seed=1, images_per_side=3)
            write_science_dataset(work / "test", 6, seed=2, images_per_side=1)
        # Adam's eps 1e-6 instead of 1e-8: the attention key biases get a gradient that is
        # zero by softmax's shift invariance, i.e. round-off, which Adam with eps 1e-8 turns
        # into full lr-sized steps of random sign (any change of summation order does that,
        # one process or two); every other weight agrees to ~1e-7 either way
        return load_config(ts.SciScoreTrainConfig, None, [
            f"data.path={work / 'train'}", "data.split=", f"data.eval_path={work / 'test'}",
            "data.eval_split=", "data.eval_limit=4", "data.num_workers=1",
            f"model.init={work / 'clip'}", f"output_dir={out}", f"train.max_steps={STEPS}",
            "train.batch_size=8", "train.micro_batch_size=2", "optim.lr=1e-3",
            "optim.warmup_steps=2", "optim.eps=1e-6", "eval.every=3", "checkpoint.every=2",
            "checkpoint.keep_last=0", "log.progress=false", "log.plot=false", *extra])

    def trained(weights: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() for t in weights.values() if t.is_floating_point())

    return Case("train-sciscore", config, (), (),
                lambda out: CheckpointManager(out / "checkpoints").load()["model"], trained,
                lambda cfg, resume: ts.train_sciscore(cfg, resume=resume))


CASES = {"sft": _sft_case, "dpo": _dpo_case, "sciscore": _sciscore_case}


@pytest.fixture(scope="module", params=list(CASES))
def straight(request, tmp_path_factory):
    """The case, its work folder, and its uninterrupted 2-process run's output folder."""
    case = CASES[request.param]()
    work = tmp_path_factory.mktemp(request.param)
    out = work / "two"
    cfg = case.config(work, out, case.two)
    save_config(cfg, work / "two.yaml")
    launch.run(2, [case.command, "--config", str(work / "two.yaml")])
    return case, work, out


def test_two_processes_train_what_one_process_with_the_same_global_batch_trains(straight):
    case, work, two = straight
    one = work / "one"
    case.train(case.config(work, one, case.one), False)
    a, b = case.weights(one), case.weights(two)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    log_one = [r for r in RunLog(one).records() if "loss" in r]
    log_two = [r for r in RunLog(two).records() if "loss" in r]
    assert [r["step"] for r in log_two] == list(range(1, STEPS + 1))
    for r1, r2 in zip(log_one, log_two):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
    if case.command == "train-sciscore":
        # train.process_loss=sum (the reference preset): each process's gradient is that of
        # the loss summed over both processes' samples, twice one process's; Adam's update
        # hardly changes with the scale, which is why the weights above still agree
        assert log_two[0]["grad_norm"] == pytest.approx(2 * log_one[0]["grad_norm"], rel=1e-4)
    # one all-reduce of every trained gradient (fp32) per optimizer step, none for one process
    assert {r["allreduce_bytes"] for r in log_two} == {4 * case.trained(b)}
    assert not any("allreduce_bytes" in r for r in log_one)


def test_a_killed_two_process_run_resumes_exactly_and_only_with_two(straight):
    case, work, two = straight
    out = work / "killed"
    save_config(case.config(work, out, case.two), work / "killed.yaml")
    args = [case.command, "--config", str(work / "killed.yaml")]
    launch.run_and_kill(2, args, kill_at_step=4)
    ckpts = out / "checkpoints"
    assert [p.name for p in CheckpointManager(ckpts).checkpoints()] == ["checkpoint-00000002"]
    staging = ckpts / ".tmp-checkpoint-00000004"
    assert (staging / "process-0.json").is_file() and not (staging / "state.json").exists()

    with pytest.raises(ScienceT2IError, match=r"2 process\(es\) and this run has 1"):
        case.train(case.config(work, out, case.two), True)

    launch.run(2, args + ["--resume"])
    a, b = case.weights(two), case.weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not staging.exists()
    steps = [r["step"] for r in RunLog(out).records() if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    assert [r["step"] for r in RunLog(out).records()] == [r["step"]
                                                        for r in RunLog(two).records()]


def test_stage2_processes_share_comfyui_servers_without_sending_a_prompt_twice(tmp_path):
    from fake_comfy import FakeComfy
    from science_t2i.training.stage2.config import Stage2Config
    from tiny_dpo import build_bright_flux, dpo_overrides, write_prompts
    flux, prompts = build_bright_flux(tmp_path / "flux"), write_prompts(tmp_path / "p.json")
    loras = tmp_path / "loras"
    with FakeComfy() as a, FakeComfy() as b:
        cfg = load_config(Stage2Config, None, dpo_overrides(
            flux, prompts, tmp_path / "out", "rollout.source=comfy", "objective.kind=flow-dpo",
            "train.rounds=2", "comfy.poll_interval=0.01", f"comfy.lora_dir={loras}",
            f"comfy.servers=[{a.url},{b.url}]"))
        save_config(cfg, tmp_path / "cfg.yaml")
        launch.run(2, ["dpo", "--config", str(tmp_path / "cfg.yaml")])
        graphs = a.received + b.received
    by_round: dict[str, list[str]] = {}
    for g in graphs:
        lora = next(n["inputs"]["lora_name"] for n in g.values()
                    if n["_meta"]["title"] == "Rollout LoRA")
        text = next(n["inputs"]["text"] for n in g.values()
                    if n["_meta"]["title"] == "Rollout prompt")
        by_round.setdefault(lora, []).append(text)
    # each round's 6 prompts went out once each, from the two processes together
    assert sorted(by_round) == ["science_t2i_rollout_000000.safetensors",
                                "science_t2i_rollout_000001.safetensors"]
    for texts in by_round.values():
        assert len(texts) == 6 and len(set(texts)) == 6
    records = RunLog(tmp_path / "out").records()
    assert [r["pairs"] for r in records if "reward_mean" in r] == [6, 6]
    assert (tmp_path / "out" / "science_t2i_oft.safetensors").is_file()


def test_a_sharded_launch_is_refused_with_the_reason(tmp_path):
    out = launch.run(2, ["sft", "data.path=/nonexistent/data.jsonl", f"output_dir={tmp_path}"],
                     launch_args=("--use_fsdp",), check=False)
    assert out.returncode != 0
    assert "FSDP, which the trainers do not support" in out.stderr
    assert "on CPU accelerate does not shard at all" in out.stderr
    assert "Traceback" not in out.stderr.split("error: accelerate is set up")[0]

