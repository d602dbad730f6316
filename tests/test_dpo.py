"""Stage-2 trainer on a tiny FLUX: learning from a synthetic reward, the adapter-disabled
reference, starting from an SFT LoRA, resume after SIGKILL, ComfyUI rollouts, bad settings."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fake_comfy import FakeComfy
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.config import load_config, save_config
from science_t2i.training.flux.reference_policy import adapter_disabled
from science_t2i.training.flux.sampler import FluxConditioning, latent_image_ids, predict_velocity
from science_t2i.training.stage2.config import Stage2Config
from science_t2i.training.stage2.rollouts import RolloutPrompt
from science_t2i.training.stage2.trainer import Stage2Trainer, train_stage2
from tiny_dpo import RES, dpo_overrides, flux_dir, prompts  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cfg_for(flux_dir, prompts, out, *extra) -> Stage2Config:
    return load_config(Stage2Config, None, dpo_overrides(flux_dir, prompts, out, *extra))


EVAL_PROMPTS = [RolloutPrompt(f"a red apple number {i}", "apple") for i in range(6)]


def fresh_reward(trainer: Stage2Trainer) -> float:
    """Mean reward of fresh rollouts with fixed prompts and seed (not used in training)."""
    seeds = [987654 + i for i in range(len(EVAL_PROMPTS))]
    return float(trainer.source.generate(EVAL_PROMPTS, 8, seeds).rewards.mean())


def _velocity(model, cond, x, sigma):
    return predict_velocity(model, x, sigma, cond, latent_image_ids(RES // 2, RES // 2))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = FluxConditioning(torch.randn(2, 32, 32, generator=g), torch.randn(2, 32, generator=g),
                            torch.zeros(32, 3))
    return cond, torch.randn(2, 4, 4, generator=g)


# ----------------------------------------------------------------------------- learning

# oft learns only from the sampler's injected noise (the transitions), flow-dpo from the final
# images: with the paper's churn 0.1 the tiny model's image-to-image spread comes almost all from
# the starting noise, so the oft check raises the churn to give its transitions a share of it
@pytest.mark.parametrize("objective,extra", [("flow-dpo", ()), ("oft", ("rollout.churn=1.0",))])
def test_a_few_dozen_steps_raise_the_reward_of_fresh_rollouts(flux_dir, prompts, tmp_path,
                                                              objective, extra):
    cfg = cfg_for(flux_dir, prompts, tmp_path / "run", f"objective.kind={objective}",
                  "rollout.samples_per_prompt=16", "train.rounds=30", "checkpoint.every=1000",
                  *extra)
    trainer = Stage2Trainer(cfg).setup()
    before = fresh_reward(trainer)
    lora = trainer.run()
    after = fresh_reward(trainer)
    print(f"\n{objective}: mean brightness of fresh rollouts {before:.4f} -> {after:.4f} "
          f"after {trainer.step} steps")
    # per-image brightness std is ~0.03: the mean of 48 images moves by far more than its noise
    assert after > before + 0.01
    records = trainer.run_log.records()
    assert sum("reward_mean" in r for r in records) == 30
    assert all("win_rate" in r and "loss" in r for r in records if "lr" in r)
    assert lora.is_file() and (tmp_path / "run" / "reward.png").is_file()


# ----------------------------------------------------------------------------- reference

def test_reference_is_the_base_model_without_a_second_copy(flux_dir, prompts, tmp_path):
    from diffusers import FluxTransformer2DModel
    trainer = Stage2Trainer(cfg_for(flux_dir, prompts, tmp_path / "r", "train.rounds=1")).setup()
    model = trainer.model
    with torch.no_grad():  # make the adapter do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    cond, x = _inputs()
    base = FluxTransformer2DModel.from_pretrained(str(flux_dir), subfolder="transformer").eval()
    with torch.no_grad():
        expected = _velocity(base, cond, x, 0.6)
        with adapter_disabled(model):
            ref = _velocity(model, cond, x, 0.6)
        policy = _velocity(model, cond, x, 0.6)
    assert torch.allclose(ref, expected, atol=1e-5)
    assert not torch.allclose(policy, expected, atol=1e-3)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)

    # storage: every base weight exists once, shared by policy and reference
    base_numel = sum(p.numel() for p in base.parameters())
    held = {}
    for n, p in model.named_parameters():
        if "lora_" not in n:
            held[p.data_ptr()] = p.numel()
    assert sum(held.values()) == base_numel
    del base
    gc.collect()
    probe = dict(model.named_parameters())["transformer_blocks.0.attn.to_q.base_layer.weight"]
    same_shape = {t.data_ptr() for t in gc.get_objects()
                  if isinstance(t, torch.Tensor) and t.shape == probe.shape
                  and t.dtype == probe.dtype and not t.requires_grad
                  and t.untyped_storage().nbytes() >= probe.untyped_storage().nbytes()
                  and torch.equal(t, probe)}
    assert same_shape == {probe.data_ptr()}, "a copy of the transformer weights is held"


def test_sft_lora_is_the_reference_and_the_export_stacks_both(flux_dir, prompts, tmp_path):
    from diffusers import FluxTransformer2DModel
    from science_t2i.nodes.lora.files import read_lora, save_flux_lora
    from science_t2i.training.flux.model import attach_lora
    sft = FluxTransformer2DModel.from_pretrained(str(flux_dir), subfolder="transformer")
    attach_lora(sft, rank=2, alpha=4.0)
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    sft_file = save_flux_lora(sft, tmp_path / "sft.safetensors")
    cond, x = _inputs(1)
    with torch.no_grad():
        sft_out = _velocity(sft, cond, x, 0.4)

    cfg = cfg_for(flux_dir, prompts, tmp_path / "oft", f"model.sft_lora={sft_file}",
                  "train.rounds=2")
    trainer = Stage2Trainer(cfg).setup()
    with torch.no_grad(), adapter_disabled(trainer.model):
        assert torch.allclose(_velocity(trainer.model, cond, x, 0.4), sft_out, atol=1e-5)
    out = trainer.run()
    with torch.no_grad():
        policy = _velocity(trainer.model, cond, x, 0.4)
    assert not torch.allclose(policy, sft_out, atol=1e-4)  # it trained

    # the exported LoRA alone, applied to the base model, reproduces the policy
    lora = read_lora(out)
    assert lora.rank == 2 + 4
    base = FluxTransformer2DModel.from_pretrained(str(flux_dir), subfolder="transformer")
    with torch.no_grad():
        for module in lora.modules:
            base.get_submodule(module.removeprefix("transformer.")).weight += lora.delta(module)
        assert torch.allclose(_velocity(base, cond, x, 0.4), policy, atol=1e-4)


# ----------------------------------------------------------------------------- resume

_CHILD = """
import sys
from science_t2i.training.cli import main
sys.exit(main(["dpo", "--config", sys.argv[1]]))
"""


def _lora(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


def test_sigkill_then_resume_equals_an_uninterrupted_run(flux_dir, prompts, tmp_path):
    # 2 rounds x 3 pairs, 1 pair per step: 3 steps a round, a checkpoint every 2 steps, so
    # checkpoint 2 is taken mid-round and holds the round's rollout buffer
    extra = ("objective.kind=oft", "train.rounds=2", "rollout.prompts_per_round=3",
             "rollout.steps=3", "train.pairs_per_step=1", "checkpoint.every=2",
             "checkpoint.keep_last=0")
    straight = train_stage2(cfg_for(flux_dir, prompts, tmp_path / "straight", *extra))

    out = tmp_path / "killed"
    cfg = cfg_for(flux_dir, prompts, out, *extra)
    save_config(cfg, tmp_path / "cfg.yaml")
    env = dict(os.environ, SCIENCE_T2I_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "cfg.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    ckpt = out / "checkpoints" / "checkpoint-00000002"
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / "state.json").is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the run did not reach checkpoint 2: {proc.stderr.read()!r}")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    from science_t2i.training.core.checkpoints import CheckpointManager
    saved = CheckpointManager(out / "checkpoints").load(ckpt)
    assert saved["round"] == 0 and saved["position"] == 2
    assert saved["round_rewards"].shape == (3, 4)
    part = CheckpointManager(out / "checkpoints").load_part(ckpt, 0)
    assert part["buffer"]["trajectory"]["latents"].shape[:2] == (12, 4)
    assert "rng" in part and part["buffer"]["prompt_indices"] == [0, 1, 2]

    resumed = train_stage2(cfg, resume=True)
    a, b = _lora(straight), _lora(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    from science_t2i.training.core.run_log import RunLog
    records = RunLog(out).records()
    assert [r["round"] for r in records if "reward_mean" in r] == [0, 1]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))


def test_resume_at_a_round_boundary_logs_each_round_once(flux_dir, prompts, tmp_path):
    # 3 steps a round and a checkpoint every 3: checkpoint 3 ends round 0 with its rollouts
    # still held; round 1's summary was logged after it, so a resume must not log it twice
    import shutil
    extra = ("objective.kind=flow-dpo", "train.rounds=2", "rollout.prompts_per_round=3",
             "train.pairs_per_step=1", "checkpoint.every=3", "checkpoint.keep_last=0")
    out = tmp_path / "run"
    straight = _lora(train_stage2(cfg_for(flux_dir, prompts, out, *extra)))
    shutil.rmtree(out / "checkpoints" / "checkpoint-00000006")   # as if killed after step 5
    resumed = _lora(train_stage2(cfg_for(flux_dir, prompts, out, *extra), resume=True))
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    from science_t2i.training.core.run_log import RunLog
    records = RunLog(out).records()
    assert [r["round"] for r in records if "reward_mean" in r] == [0, 1]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))


# ----------------------------------------------------------------------------- ComfyUI source

def test_flow_dpo_with_rollouts_on_comfyui_servers(flux_dir, prompts, tmp_path):
    loras = tmp_path / "comfy_loras"
    with FakeComfy() as a, FakeComfy() as b:
        cfg = cfg_for(flux_dir, prompts, tmp_path / "c", "rollout.source=comfy",
                      "objective.kind=flow-dpo", "train.rounds=2", "comfy.poll_interval=0.01",
                      f"comfy.lora_dir={loras}", "mask.enabled=true")
        trainer = Stage2Trainer(cfg, comfy_servers=[a.url, b.url]).setup()
        probe = trainer.source.generate(EVAL_PROMPTS[:2], 4, [1, 2])
        path = trainer.run()
    # the graph's subject masks (the fake draws the left half) on the 4x4 latent grid
    assert probe.latent_masks.shape == (8, 1, 4, 4)
    assert torch.all(probe.latent_masks[..., :2] == 1) and torch.all(probe.latent_masks[..., 2:] == 0)
    assert probe.final_latents.shape == (8, 4, 4) and probe.trajectory is None
    graphs = a.received + b.received
    assert len(graphs) == 2 + 12 and a.received and b.received
    names = {n["inputs"]["lora_name"] for g in graphs for n in g.values()
             if n["_meta"]["title"] == "Rollout LoRA"}
    assert names == {"science_t2i_rollout_000000.safetensors",
                     "science_t2i_rollout_000001.safetensors"}
    assert [p.name for p in loras.iterdir()] == ["science_t2i_rollout_000001.safetensors"]
    records = trainer.run_log.records()
    # rewards are the SciScore values the graph wrote into the PNGs ((seed + j) % 10 / 10)
    first = [r for r in records if "reward_mean" in r][0]
    assert 0.0 <= first["reward_mean"] <= 0.9 and first["pairs"] == 6
    assert sum("loss" in r for r in records) == 2 and path.is_file()


# ----------------------------------------------------------------------------- settings

def test_bad_settings_are_explained(flux_dir, prompts, tmp_path):
    with pytest.raises(ScienceT2IError, match="only in-process rollouts record"):
        cfg_for(flux_dir, prompts, tmp_path, "rollout.source=comfy", "objective.kind=oft")
    with pytest.raises(ScienceT2IError, match="samples_per_prompt must be >= 2"):
        cfg_for(flux_dir, prompts, tmp_path, "rollout.samples_per_prompt=1")
    with pytest.raises(ScienceT2IError, match="rollout.churn"):
        cfg_for(flux_dir, prompts, tmp_path, "rollout.churn=0")
    with pytest.raises(ScienceT2IError, match="rollout.prompts is not set"):
        Stage2Trainer(cfg_for(flux_dir, prompts, tmp_path, "rollout.prompts=")).setup()
    bad = tmp_path / "bad.json"
    bad.write_text('[{"object": "glass"}]')
    with pytest.raises(ScienceT2IError, match="entry 0 has no \"prompt\""):
        Stage2Trainer(cfg_for(flux_dir, prompts, tmp_path, f"rollout.prompts={bad}")).setup()
    with pytest.raises(ScienceT2IError, match="needs servers"):
        Stage2Trainer(cfg_for(flux_dir, prompts, tmp_path, "rollout.source=comfy",
                           "objective.kind=flow-dpo")).setup()


def test_paper_defaults_and_the_cli(capsys):
    from science_t2i.training.cli import main
    cfg = Stage2Config()
    assert (cfg.objective.kind, cfg.objective.eps, cfg.objective.beta) == ("oft", 0.1, 10.0)
    assert (cfg.rollout.steps, cfg.rollout.churn, cfg.rollout.guidance,
            cfg.rollout.resolution, cfg.rollout.samples_per_prompt) == (30, 0.1, 0.0, 512, 2)
    assert cfg.optim.lr == 3e-4 and cfg.lora.rank == 16 and cfg.mask.enabled
    assert (cfg.mask.box_threshold, cfg.mask.text_threshold) == (0.35, 0.25)
    assert main(["dpo", "--print-config", "--comfy", "http://127.0.0.1:8188",
                 "objective.kind=flow-dpo"]) == 0
    text = capsys.readouterr().out
    assert "source: comfy" in text and "kind: flow-dpo" in text


# ----------------------------------------------------------------------------- subject masks

def test_masked_oft_with_grounding_dino_subject_masks(flux_dir, prompts, tmp_path):
    from science_t2i.nodes.masks.gdino import load_grounding_dino
    from tiny_gdino import build_tiny_gdino
    gdino = build_tiny_gdino(tmp_path / "grounding-dino-tiny-test")
    cfg = cfg_for(flux_dir, prompts, tmp_path / "m", "mask.enabled=true", f"mask.model={gdino}",
                  "mask.box_threshold=0.05", "mask.text_threshold=0.05", "train.rounds=1",
                  "objective.kind=oft")
    trainer = Stage2Trainer(cfg).setup()
    batch = trainer.source.generate(EVAL_PROMPTS[:2], 2, [3, 4])
    assert batch.latent_masks.shape == (4, 1, 4, 4)
    # independently: the detector's merged box, cut on the 4x4 latent grid by truncation
    detector = load_grounding_dino(str(gdino), device="cpu")
    for i in range(4):
        (det,) = detector.detect(batch.images[i:i + 1], "apple", 0.05, 0.05)
        cx, cy, w, h = det.merged_box_cxcywh().tolist()
        expected = torch.zeros(4, 4)
        rows = slice(max(int((cy - h / 2) * 4), 0), max(int((cy + h / 2) * 4), 0))
        cols = slice(max(int((cx - w / 2) * 4), 0), max(int((cx + w / 2) * 4), 0))
        expected[rows, cols] = 1
        assert torch.equal(batch.latent_masks[i, 0], expected)
    trainer.run()
    losses = [r["loss"] for r in trainer.run_log.records() if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_rollout_prompts_are_encoded_once_and_the_text_encoders_released(
        flux_dir, prompts, tmp_path, monkeypatch):
    """Stage 2 holds no text encoder while it samples and trains: every rollout prompt is
    encoded once at setup (into the prompt cache) and read from there each round."""
    from science_t2i.training.flux import model as flux_model
    real = flux_model.FluxEncoders.encode_prompts
    encoded: list[str] = []

    def counting(self, texts):
        encoded.extend(texts)
        return real(self, texts)
    monkeypatch.setattr(flux_model.FluxEncoders, "encode_prompts", counting)
    trainer = Stage2Trainer(cfg_for(flux_dir, prompts, tmp_path / "run", "train.rounds=2")).setup()
    unique = sorted({p.prompt for p in trainer.prompts})
    assert sorted(encoded) == unique                      # each prompt once, at setup
    assert trainer.encoders._text is None                 # released before sampling
    texts = unique[:3] + unique[:1]
    cached = trainer.conditioning.encode_prompts(texts)
    fresh = flux_model.FluxEncoders(trainer.model_dir, trainer.device, trainer.weight_dtype,
                                    32)
    live = real(fresh, texts)
    assert all(torch.equal(a, b) for a, b in zip(cached, live))   # the same conditioning
    trainer.run()
    assert sorted(encoded) == unique                      # nothing encoded during the rounds
    assert trainer.encoders._text is None
    # a run that points at the same prompt cache loads no text encoder at all
    encoded.clear()
    again = cfg_for(flux_dir, prompts, tmp_path / "run2", "train.rounds=1",
                    f"rollout.prompt_cache={tmp_path / 'run' / 'prompt_cache'}")
    Stage2Trainer(again).setup()
    assert encoded == []
    with pytest.raises(ScienceT2IError, match="not encoded beforehand"):
        trainer.conditioning.encode_prompts(["a prompt outside the rollout set"])


def test_reward_and_mask_models_are_offloaded_after_each_use(flux_dir, prompts, tmp_path,
                                                            monkeypatch):
    """SciScore and GroundingDINO sit on the training device only while they score and mask:
    each is handed back to its offload device right after its use in a round."""
    from science_t2i.nodes import _comfy
    from tiny_clip import build_tiny_clip
    from tiny_gdino import build_tiny_gdino
    offloaded = []
    real_offload = _comfy.offload

    def spy(handle):
        offloaded.append(type(handle.model).__name__)
        real_offload(handle)
    monkeypatch.setattr(_comfy, "offload", spy)
    clip = build_tiny_clip(tmp_path / "clip")
    gdino = build_tiny_gdino(tmp_path / "grounding-dino-tiny-test")
    cfg = cfg_for(flux_dir, prompts, tmp_path / "r", "reward.kind=sciscore",
                  f"reward.model={clip}", "reward.dtype=fp32", "mask.enabled=true",
                  f"mask.model={gdino}", "mask.box_threshold=0.05", "mask.text_threshold=0.05",
                  "train.rounds=1")
    trainer = Stage2Trainer(cfg).setup()
    batch = trainer.source.generate(EVAL_PROMPTS[:2], 2, [3, 4])
    assert batch.rewards.shape == (2, 2) and batch.latent_masks.shape == (4, 1, 4, 4)
    assert offloaded == ["CLIPModel", "GroundingDinoForObjectDetection"]


def test_offload_moves_a_standalone_model_to_its_offload_device():
    from science_t2i.nodes import _comfy
    model = torch.nn.Linear(3, 2)
    handle = _comfy.StandaloneHolder(model, torch.device("cpu"), torch.device("meta"))
    _comfy.offload(handle)
    assert all(p.device.type == "meta" for p in model.parameters())
    same = _comfy.StandaloneHolder(torch.nn.Linear(3, 2), torch.device("cpu"),
                                   torch.device("cpu"))
    _comfy.offload(same)   # nothing to move
    assert all(p.device.type == "cpu" for p in same.model.parameters())
