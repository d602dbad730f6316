"""The ``reference`` preset against the reference implementation's formulas, written out here
independently: the online stage's 2x2 loss with ties kept, continuing the SFT LoRA against a
frozen copy of it, SFT's discrete timestep levels and its resize."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from science_t2i.training.core.config import load_config
from science_t2i.training.flux.sampler import Trajectory, transition_log_prob
from science_t2i.training.stage2.config import Stage2Config
from science_t2i.training.stage2.trainer import Stage2Trainer
from tiny_dpo import dpo_overrides, flux_dir, prompts  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_cfg(flux_dir, prompts, out, *extra) -> Stage2Config:
    # dpo_overrides starts with preset=pack; the later preset=reference wins, and the pack
    # test settings that the reference preset fixes (2 samples, its own pairs per step) go
    over = [o for o in dpo_overrides(flux_dir, prompts, out) if not o.startswith(
        ("preset=", "rollout.samples_per_prompt=", "train.pairs_per_step=",
         "rollout.prompts_per_round="))]
    return load_config(Stage2Config, None, ["preset=reference", "rollout.prompts_per_round=4",
                                         *over, *extra])


def reference_matrix_loss(lp, lp_ref, rewards, eps=0.1, beta=10.0):
    """oft_flux.py's loss for one prompt's two samples at one timestep, as written there."""
    reward_diff = rewards[:, None] - rewards
    ratio = torch.log(torch.clamp(torch.exp(lp - lp_ref), 1 - eps, 1 + eps))
    ratio_diff = ratio[:, None] - ratio
    return -torch.log(torch.sigmoid(beta * ratio_diff * (reward_diff > 0))).mean()


# ----------------------------------------------------------------------------- presets

def test_reference_preset_values_and_mixing():
    ref = Stage2Config()
    assert ref.preset == "reference"
    assert (ref.model.sft_start, ref.objective.pair_loss, ref.objective.ties,
            ref.train.rounds, ref.train.pairs_per_step, ref.reward.dtype, ref.lora.dtype) == \
        ("continue", "matrix", "keep", 39, 2, "fp32", "base")
    pack = load_config(Stage2Config, None, ["preset=pack"])
    assert (pack.model.sft_start, pack.objective.pair_loss, pack.objective.ties,
            pack.train.rounds, pack.train.pairs_per_step, pack.reward.dtype,
            pack.lora.dtype) == ("merge", "pair", "drop", 100, 1, "auto", "fp32")
    mixed = load_config(Stage2Config, None, ["preset=pack", "objective.ties=keep"])
    assert (mixed.objective.ties, mixed.objective.pair_loss) == ("keep", "pair")
    with pytest.raises(Exception, match="samples_per_prompt"):
        load_config(Stage2Config, None, ["rollout.samples_per_prompt=4"])


def test_matrix_loss_is_the_reference_formula_with_ties():
    from science_t2i.training.stage2.losses import oft_loss
    g = torch.Generator().manual_seed(0)
    trainer = Stage2Trainer.__new__(Stage2Trainer)
    trainer.cfg = Stage2Config()
    for rewards in (torch.tensor([0.3, 0.9]), torch.tensor([0.9, 0.3]),
                    torch.tensor([0.5, 0.5])):
        lp = (torch.randn(2, generator=g) * 0.05).requires_grad_()
        lp_ref = torch.randn(2, generator=g) * 0.05 + lp.detach()
        ref = reference_matrix_loss(lp, lp_ref, rewards)
        (g_ref,) = torch.autograd.grad(ref, lp)
        w, lo = int(rewards.argmax()), int(rewards.argmin())
        if rewards[w] > rewards[lo]:
            ours = trainer.pair_form(oft_loss(lp[w], lp_ref[w], lp[lo], lp_ref[lo],
                                              reduction="none"))
            (g_ours,) = torch.autograd.grad(ours, lp)
        else:   # a tie: the trainer counts ln 2 and runs no forward (its gradient is zero)
            ours, g_ours = torch.tensor(math.log(2)), torch.zeros(2)
        assert abs(float(ours.detach()) - float(ref.detach())) < 1e-6
        assert torch.allclose(g_ours, g_ref, atol=1e-7)
        if rewards[0] == rewards[1]:
            assert g_ref.abs().max() == 0


def test_a_reference_step_has_the_reference_gradient(flux_dir, prompts, tmp_path):
    """One optimizer step of the trainer against oft_flux.py's loop written out: for each of
    the step's prompts and each timestep, the 2x2 loss over the prompt's two samples, divided
    by (prompts x timesteps) as accelerate's accumulation does; a tied prompt included."""
    cfg = reference_cfg(flux_dir, prompts, tmp_path / "r", "train.rounds=1",
                        "rollout.churn=1.0", "train.pairs_per_step=3")
    trainer = Stage2Trainer(cfg).setup()
    with torch.no_grad():   # a policy away from the reference, so the ratios are not all 0
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    batch, _ = trainer.generate_round()
    trainer.buffer = batch
    rewards = torch.tensor([[0.2, 0.7], [0.4, 0.4], [0.9, 0.1], [0.3, 0.5]])
    plan = trainer.round_plan(rewards)
    assert len(plan) == 4 and sum(p.reward_gap == 0 for _, p in plan) == 1   # the tie is kept
    scheduled = plan[:3]

    captured = {}

    def capture():
        captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()
                         if p.requires_grad})
        trainer.optimizer.zero_grad(set_to_none=True)
        return {"lr": 0.0}
    trainer.optimizer_step = capture
    metrics = trainer.train_step(batch, scheduled)

    # the reference's loop, on the same rollouts through the same log-prob maths
    t = batch.trajectory
    steps = t.num_steps
    model = trainer.model
    model.zero_grad(set_to_none=True)
    total = 0.0
    for _, pair in scheduled:
        i = batch.local_index(pair.prompt_index)
        rows = [i * 2, i * 2 + 1]
        sel = Trajectory(t.latents[rows], t.log_probs[rows], t.noise[rows], t.sigmas, t.stds,
                         t.latent_height, t.latent_width)
        cond = batch.conditioning(rows, trainer.device)
        r = rewards[pair.prompt_index]
        for j in range(steps):
            with torch.no_grad(), trainer._reference():
                lp_ref = transition_log_prob(trainer.unwrapped, sel, j, cond)
            lp = transition_log_prob(model, sel, j, cond)
            loss = reference_matrix_loss(lp, lp_ref, r) / (len(scheduled) * steps)
            loss.backward()
            total += float(loss.detach())
    assert metrics["loss"] == pytest.approx(total, abs=1e-6)
    for n, p in model.named_parameters():
        if p.requires_grad:
            ref_grad = p.grad if p.grad is not None else torch.zeros_like(p)
            assert torch.allclose(captured[n], ref_grad, atol=1e-6, rtol=1e-5), n
    assert any(g.abs().max() > 0 for g in captured.values())


# ----------------------------------------------------------------------------- continuing SFT

def _sft_lora(flux_dir, path, scale=0.3):
    from diffusers import FluxTransformer2DModel
    from science_t2i.nodes.lora.files import save_flux_lora
    from science_t2i.training.flux.model import attach_lora
    sft = FluxTransformer2DModel.from_pretrained(str(flux_dir), subfolder="transformer")
    attach_lora(sft, rank=4, alpha=4.0)
    g = torch.Generator().manual_seed(11)   # A and B: the file must not depend on test order
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_A" in n:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return save_flux_lora(sft, path)


def test_continuing_the_sft_lora(flux_dir, prompts, tmp_path):
    from diffusers import FluxTransformer2DModel
    from science_t2i.nodes.lora.files import read_lora
    from science_t2i.training.flux.reference_policy import merge_lora_into_weights
    sft_file = _sft_lora(flux_dir, tmp_path / "sft.safetensors")
    cfg = reference_cfg(flux_dir, prompts, tmp_path / "oft", f"model.sft_lora={sft_file}",
                        "train.rounds=2", "rollout.churn=1.0", "optim.lr=0.05")
    trainer = Stage2Trainer(cfg).setup()
    assert trainer.continuing
    sft_model = FluxTransformer2DModel.from_pretrained(str(flux_dir), subfolder="transformer")
    merge_lora_into_weights(sft_model, read_lora(sft_file))

    # the first step's reference (and policy) log-probs are the SFT model's
    batch, _ = trainer.generate_round()
    t = batch.trajectory
    rows = [0, 1]
    sel = Trajectory(t.latents[rows], t.log_probs[rows], t.noise[rows], t.sigmas, t.stds,
                     t.latent_height, t.latent_width)
    cond = batch.conditioning(rows, trainer.device)
    with torch.no_grad():
        expected = torch.stack([transition_log_prob(sft_model, sel, j, cond)
                                for j in range(t.num_steps)])
        with trainer._reference():
            ref = torch.stack([transition_log_prob(trainer.unwrapped, sel, j, cond)
                               for j in range(t.num_steps)])
        policy = torch.stack([transition_log_prob(trainer.model, sel, j, cond)
                              for j in range(t.num_steps)])
    assert torch.allclose(ref, expected, atol=1e-4, rtol=1e-5)
    assert torch.allclose(policy, expected, atol=1e-4, rtol=1e-5)
    # the sampled log-probs came from the same SFT policy
    assert torch.allclose(t.log_probs[rows].T, expected, atol=1e-3, rtol=1e-4)

    # one transformer's weights; the reference costs one LoRA
    model = trainer.unwrapped
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    lora = sum(p.numel() for n, p in model.named_parameters() if ".default." in n)
    frozen = sum(p.numel() for n, p in model.named_parameters() if ".sft_reference." in n)
    assert base == sum(p.numel() for p in sft_model.parameters()) and frozen == lora
    deep_copy_design = 2 * (base + lora)      # the reference deep-copies transformer + LoRA
    print(f"\nparameters held: {base + 2 * lora} vs deep copy {deep_copy_design} "
          f"({(base + 2 * lora) / deep_copy_design:.2f}x)")
    assert (base + 2 * lora) / deep_copy_design <= 0.6
    assert all(not p.requires_grad for n, p in model.named_parameters()
               if ".sft_reference." in n)

    # training moves the policy, not the reference; the export is the trained adapter alone
    out = trainer.run()
    with torch.no_grad(), trainer._reference():
        ref_after = transition_log_prob(trainer.unwrapped, sel, 0, cond)
    assert torch.allclose(ref_after, expected[0], atol=1e-4, rtol=1e-5)
    exported = read_lora(out)
    assert exported.rank == 4
    sft = read_lora(sft_file)
    assert any(not torch.allclose(exported.delta(m), sft.delta(m), atol=1e-4)
               for m in sft.modules)


def test_continuing_the_sft_lora_learns(flux_dir, prompts, tmp_path):
    """test_dpo's learning check with the reference preset's start: the SFT LoRA trained on
    against its frozen copy. It keeps test_dpo's 16 samples per prompt and the pair loss: with
    the reference's 2 samples and 2x2 loss the tiny model's signal does not stand out of its
    drift (rewarding darkness also brightened it; the gap between the two rewards measured
    -0.003 to +0.026 over SFT LoRAs and seeds), so that loss is pinned by the exact gradient
    tests above instead."""
    from test_dpo import fresh_reward
    sft_file = _sft_lora(flux_dir, tmp_path / "sft.safetensors", scale=0.05)
    cfg = reference_cfg(flux_dir, prompts, tmp_path / "run", f"model.sft_lora={sft_file}",
                        "train.rounds=30", "rollout.churn=1.0", "rollout.prompts_per_round=6",
                        "rollout.samples_per_prompt=16", "objective.pair_loss=pair",
                        "train.pairs_per_step=6", "optim.lr=0.1", "checkpoint.every=1000")
    trainer = Stage2Trainer(cfg).setup()
    assert trainer.continuing
    before = fresh_reward(trainer)
    trainer.run()
    after = fresh_reward(trainer)
    print(f"\ncontinuing the SFT LoRA: mean brightness of fresh rollouts {before:.4f} -> "
          f"{after:.4f} after {trainer.step} steps")
    assert after > before + 0.01


# ----------------------------------------------------------------------------- SFT

def test_sft_discrete_levels_are_the_schedulers():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from science_t2i.training.flux.flow_matching import sample_discrete

    # FLUX.1-dev's scheduler config; sft_flux.py deep-copies the pipeline's scheduler before
    # any set_timesteps, so its tables are the constructor's
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                            use_dynamic_shifting=True)
    g = torch.Generator().manual_seed(0)
    sigma, timestep = sample_discrete(4000, generator=g)
    # get_sigmas() of sft_flux.py: the sigma at the position of the drawn timestep
    t_full = timestep * 1000
    idx = torch.stack([(sched.timesteps == t).nonzero()[0, 0] for t in t_full[:200]])
    assert torch.equal(sched.sigmas[idx], sigma[:200])
    assert torch.equal(sched.timesteps[idx] / 1000, timestep[:200])
    assert set(sigma.tolist()) <= set(sched.sigmas.tolist())
    assert len(set(sigma.tolist())) > 900          # the 1000 levels, uniformly
    assert 0.45 < float(sigma.mean()) < 0.55


@pytest.mark.parametrize("size", [(64, 48), (48, 96), (32, 32), (20, 36)])
def test_sft_resize_is_torchvision_resize_without_crop(tmp_path, size):
    from science_t2i.training.core.datasets import ImageRef
    from science_t2i.training.flux.latent_cache import load_image_tensor
    from torchvision import transforms
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    f = tmp_path / "a.png"
    img.save(f)
    reference = transforms.Compose([transforms.Resize(32, interpolation=transforms
                                                      .InterpolationMode.BILINEAR),
                                    transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    expected = reference(img)
    ours = load_image_tensor(ImageRef(path=f), 32, upscale_small=True, resample="bilinear",
                             crop=False)
    assert torch.equal(ours, expected)
    # a side that the latent packing cannot take is trimmed to a multiple, centred
    trimmed = load_image_tensor(ImageRef(path=f), 32, upscale_small=True, resample="bilinear",
                                crop=False, multiple=16)
    h, w = expected.shape[-2:]
    top, left = (h % 16) // 2, (w % 16) // 2
    assert torch.equal(trimmed, expected[:, top:top + h - h % 16, left:left + w - w % 16])


def test_sft_reference_preset_trains_on_images_of_several_sizes(flux_dir, tmp_path):
    from science_t2i.training.sft.config import SFTConfig
    from science_t2i.training.sft.trainer import SFTTrainer
    from test_sft import _dataset, _noise_image
    images = [_noise_image(0, (48, 32)), _noise_image(1, (32, 32)), _noise_image(2, (32, 64))]
    path = _dataset(tmp_path, [{"implicit_prompt": "ice", "explicit_image": images[:2]},
                               {"implicit_prompt": "rust", "explicit_image": images[2:]}])
    cfg = load_config(SFTConfig, None, [
        f"model.path={flux_dir}", f"data.path={path}", "data.split=null",
        "data.resolution=32", f"output_dir={tmp_path / 'o'}", "cache.max_sequence_length=32",
        "train.mixed_precision=fp32", "train.batch_size=3", "train.grad_accum=1",
        "train.epochs=3", "log.progress=false", "log.plot_every=0", "checkpoint.every=0",
        "train.gradient_checkpointing=false"])
    trainer = SFTTrainer(cfg).setup()
    assert trainer.total_steps == 2            # 3 epochs x 2 records / 3 per step
    groups = trainer.micro_batches(0)
    assert sum(n for _, n in groups) == 3 and len(groups) >= 2
    # the step's loss is the mean of the per-sample losses, whatever the grouping
    per_sample = []
    for sample, n in groups:
        inputs = trainer.model_inputs(sample)
        with torch.no_grad():
            pred = trainer.model(**{k: v for k, v in inputs.items() if k != "target"},
                                 return_dict=False)[0]
        per_sample += ((pred - inputs["target"]) ** 2).flatten(1).mean(1).tolist()
        assert set(inputs["timestep"].tolist()) <= set((trainer.levels[1] / 1000).tolist())
    metrics = trainer.train_step()
    assert metrics["loss"] == pytest.approx(sum(per_sample) / 3, rel=1e-5)
    lora = trainer.run()
    assert lora.is_file()


def test_lora_dtype_base_keeps_bf16_weights(flux_dir):
    from science_t2i.training.flux.model import attach_lora, load_transformer
    model = load_transformer(flux_dir, torch.bfloat16, torch.device("cpu"))
    params = attach_lora(model, 4, 4.0, dtype="base")
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    model = load_transformer(flux_dir, torch.bfloat16, torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in attach_lora(model, 4, 4.0, dtype="fp32"))
