"""Stage-2 speed and memory, measured side by side in one run.

A small-but-not-tiny random FLUX in the diffusers layout (16 latent channels and an 8x VAE like
FLUX.1; transformer with 2 double + 4 single blocks, 4 heads x 64; 256 px -> 256 image tokens
+ 128 T5 tokens; guidance embedding), the same model for every measurement:

1. flow-dpo step / SFT step: the stage-2 trainer's Flow-DPO step on B pairs (reference forward
   without gradients on 2B samples, policy forward + backward on 2B samples, optimizer step)
   against a plain SFT step on B samples (forward, flow-matching MSE, backward, gradient
   clipping, optimizer step) of the same LoRA model. FLOPs: (2 x 3 + 2 x 1) / 3 = 2.67x. Target <= 2.8x.
2. peak memory of a Flow-DPO step with the adapter-disabled reference (one transformer) against
   the same step with a deep-copied frozen reference transformer, as the reference
   implementation does. Each in its own process; memory = the process's peak resident set
   during two training steps, minus its size before the models were loaded (so: the weights
   held, plus the step's activations, gradients and optimizer state; glibc set to return
   large freed buffers, so that the peak follows live memory). Target <= 0.6x.
   The ratio is (W + R) / (2W + R) for weights W and the rest of the step R, so it depends
   on W : R, and this is measured on a model with FLUX.1-dev's proportion, not on the speed
   model (whose 384 tokens at width 256 without checkpointing make R several times W).
   FLUX.1-dev training at 512 px with gradient checkpointing, one pair per step: W = 11.9 G
   params in bf16 = 23.8 GB; R = the 57 blocks' checkpointed inputs for 2 samples (1536
   tokens x 3072 x 2 B x 2 x 57 = 1.1 GB) + one block's activations, recomputed in backward
   (~30 values per token and width: ~0.6 GB) + the rank-16 LoRA's 19 M weights, gradients
   and Adam state (~0.3 GB): W : R ~ 12 : 1, so ~0.54x is expected there. Per block, weights
   grow as width^2 and activations as tokens x width, so a model with FLUX.1's blocks and
   block count (19 double + 38 single), FLUX.1's tokens / width (~0.5), checkpointing on and
   FLUX.1's LoRA rank / width keeps that proportion at a small width: here width 384 (3 heads
   x 128), 192 px -> 144 image + 64 text tokens, LoRA rank 2 (fp32 on CPU, both variants
   alike). The run prints the measured W and R.
3. sampling with per-step log-probabilities and the kept trajectory against plain sampling
   (same stochastic sampler, no log-probs, nothing kept). Target <= 1.1x.
4. the bytes DDP all-reduces per optimizer step on several processes: the LoRA's gradients,
   computed, and counted by the trainer core's DDP hook in a real 2-process run of two
   Flow-DPO steps (``accelerate launch``; gloo on CPU); and FLUX.1-dev's figure.

On CUDA (``--device cuda``) memory is torch's peak allocated memory instead of RSS.
Times are the process's CPU time per step on CPU (other processes on a shared machine do not
inflate it; one thread by default) or wall time with synchronisation on CUDA; median of
alternating blocks.

    python benchmarks/dpo.py [--rounds 5] [--steps 2] [--pairs 1] [--res 256] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

# benchmarks/ is the script's own folder
from allreduce import counted_by_ddp, gradient_bytes
from builders import step_spec, tiny_flux
from peak_rss import PeakRSS, rss_bytes

os.environ.setdefault("SCIENCE_T2I_NO_PROGRESS", "1")


# the memory model: FLUX.1-dev's 19 double + 38 single blocks at width 384 (FLUX.1: 3072),
# 192 px -> 144 image tokens + 64 text tokens (tokens / width ~0.5 as FLUX.1 at 512 px:
# 1536 / 3072), LoRA rank 2 (rank / width as 16 / 3072); see the module docstring
MEM_HEADS, MEM_HEAD_DIM, MEM_RANK, MEM_RES, MEM_TEXT = 3, 128, 2, 192, 64
MEM_DOUBLE, MEM_SINGLE = 19, 38


def build(workdir: Path) -> None:
    tf = tiny_flux()
    tf.build_tiny_flux_pipeline(workdir / "flux", step_spec(tf))
    mem = tf.TinyFluxSpec(latent_channels=16, vae_blocks=(8, 8, 8, 8), clip_hidden=768,
                          t5_hidden=4096, t5_max_length=MEM_TEXT, heads=MEM_HEADS,
                          head_dim=MEM_HEAD_DIM, axes_dims_rope=(16, 56, 56),
                          num_layers=MEM_DOUBLE, num_single_layers=MEM_SINGLE,
                          guidance_embeds=True)
    tf.build_tiny_flux_pipeline(workdir / "flux-mem", mem)
    (workdir / "prompts.json").write_text(json.dumps(
        [{"prompt": f"an object under condition {i}", "object": "object"} for i in range(8)]))


def _trainer(work: Path, args: argparse.Namespace, objective: str = "flow-dpo",
             model: str = "flux", *extra: str):
    from science_t2i.training.core.config import load_config
    from science_t2i.training.stage2.config import Stage2Config
    from science_t2i.training.stage2.trainer import Stage2Trainer
    cfg = load_config(Stage2Config, None, [
        f"model.path={work / model}", f"rollout.prompts={work / 'prompts.json'}",
        f"rollout.resolution={args.res}", f"rollout.steps={args.sample_steps}",
        f"rollout.prompts_per_round={args.pairs}", "rollout.samples_per_prompt=2",
        "rollout.max_sequence_length=128", f"rollout.batch_size={2 * args.pairs}",
        "reward.kind=brightness", "mask.enabled=false", f"objective.kind={objective}",
        f"train.pairs_per_step={args.pairs}", f"train.mixed_precision={args.precision}",
        "train.gradient_checkpointing=false", "log.progress=false",
        f"output_dir={work / ('out-' + objective)}", *extra])
    return Stage2Trainer(cfg).setup()


def _fake_pairs_batch(trainer, args):
    """A rollout buffer of random clean latents (B prompts x 2) without sampling."""
    import torch
    from science_t2i.training.stage2.losses import Pair
    from science_t2i.training.stage2.rollouts import RolloutBatch, RolloutPrompt
    b = args.pairs
    lh = lw = args.res // trainer.vae_scale
    c = trainer.unwrapped.config.in_channels
    seq, pooled = trainer.encoders.encode_prompts([f"prompt {i}" for i in range(2 * b)])
    batch = RolloutBatch([RolloutPrompt(f"prompt {i}", "object") for i in range(b)], 2,
                         torch.zeros(2 * b, args.res, args.res, 3),
                         torch.tensor([[1.0, 0.0]] * b),
                         torch.randn(2 * b, (lh // 2) * (lw // 2), c), seq.float().cpu(),
                         pooled.float().cpu(), None, lh, lw)
    return batch, [(0, Pair(i, 0, 1, 1.0)) for i in range(b)]


class Clock:
    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def now(self) -> float:
        if self.cuda:
            import torch
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


def child_speed(args: argparse.Namespace) -> dict:
    import torch
    from science_t2i.training.flux.flow_matching import flow_matching_loss
    from science_t2i.training.flux.sampler import (latent_image_ids, predict_velocity,
                                                   sample_plain, sample_trajectory)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    trainer = _trainer(work, args)
    dev = trainer.device
    batch, pairs = _fake_pairs_batch(trainer, args)
    model = trainer.unwrapped
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    b = args.pairs
    # SFT step on B samples of the same model and shapes
    x0 = batch.final_latents[:b].to(dev)
    cond = batch.conditioning(list(range(b)), dev)
    ids = latent_image_ids(batch.latent_height, batch.latent_width, dev)
    g = torch.Generator().manual_seed(0)

    def sft_step() -> None:
        noise = torch.randn(x0.shape, generator=g).to(dev)
        sigma = torch.rand(b, generator=g).to(dev)
        s = sigma.view(-1, 1, 1)
        with trainer.accelerator.autocast():
            pred = predict_velocity(model, (1 - s) * x0 + s * noise, sigma, cond, ids)
        flow_matching_loss(pred, noise - x0).backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, 1.0)  # as the SFT trainer does
        opt.step()
        opt.zero_grad(set_to_none=True)

    def dpo_step() -> None:
        trainer.train_step(batch, pairs)

    sample_cond = batch.conditioning(list(range(2 * b)), dev)

    def sampling(sampler: Callable) -> Callable[[], None]:
        """The same sampling call, with or without the per-step log-probabilities."""
        return lambda: sampler(model, sample_cond, height=args.res, width=args.res,
                               num_steps=args.sample_steps, churn=0.1,
                               generator=torch.Generator().manual_seed(1),
                               vae_scale_factor=trainer.vae_scale,
                               scheduler_config=trainer.scheduler_config)
    with_logprobs, plain = sampling(sample_trajectory), sampling(sample_plain)

    clock = Clock(dev.type)
    fns = {"sft": sft_step, "flow-dpo": dpo_step, "sample+logprob": with_logprobs,
           "sample": plain}
    grad_bytes = gradient_bytes(trainer.params)
    for f in fns.values():  # warm-up: allocator, lazy inits, optimizer state
        f()
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    model.eval()
    for _ in range(args.rounds):
        for name, f in fns.items():
            if name in ("sft", "flow-dpo"):
                model.train()
            t0 = clock.now()
            for _ in range(args.steps):
                f()
            times[name].append((clock.now() - t0) / args.steps)
    return {**{k: statistics.median(v) for k, v in times.items()}, "grad_bytes": grad_bytes}


def child_ddp(args: argparse.Namespace) -> dict:
    """Two Flow-DPO optimizer steps on every process; the bytes the DDP hook counted."""
    trainer = _trainer(Path(args.workdir), args, "flow-dpo", "flux",
                       "rollout.prompts_per_round=2")   # a prompt for each process
    batch, pairs = _fake_pairs_batch(trainer, args)
    for _ in range(2):
        metrics = trainer.train_step(batch, pairs)
    return {"allreduce_bytes": metrics["allreduce_bytes"]}


def _use_deep_copied_reference(trainer) -> None:
    """Switch the trainer to the reference implementation's way: a frozen deep copy of the
    transformer answers the reference forwards."""
    import contextlib

    import torch
    from science_t2i.training.stage2 import trainer as dpo_mod
    with torch.no_grad():
        ref = copy.deepcopy(trainer.unwrapped)
    ref.requires_grad_(False)
    ref.disable_adapters()
    state = {"ref": False}

    @contextlib.contextmanager
    def reference_mode(_model, _layers=None):
        state["ref"] = True
        try:
            yield
        finally:
            state["ref"] = False

    real_predict = dpo_mod.predict_velocity

    def predict(model, *a, **k):
        return real_predict(ref if state["ref"] else model, *a, **k)
    dpo_mod.adapter_disabled = reference_mode
    dpo_mod.predict_velocity = predict
    trainer._deep_copied_reference = ref


def child_memory(args: argparse.Namespace) -> dict:
    # libraries first: their code and data are not the training step's memory
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from diffusers import AutoencoderKL, FluxTransformer2DModel  # noqa: F401
    from science_t2i.training.flux import model as flux_model  # noqa: F401
    from science_t2i.training.stage2 import rollouts, trainer  # noqa: F401
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = rss_bytes()
    work = Path(args.workdir)
    # FLUX.1-dev proportions: gradient checkpointing on, LoRA rank / width as rank 16 / 3072
    trainer = _trainer(work, args, "flow-dpo", "flux-mem", "train.gradient_checkpointing=true",
                       f"lora.rank={MEM_RANK}", f"lora.alpha={MEM_RANK}",
                       f"rollout.resolution={MEM_RES}", f"rollout.max_sequence_length={MEM_TEXT}")
    trainer.encoders.release()  # measure the transformer(s) and the step, not the encoders
    if args.child == "memory-copy":
        _use_deep_copied_reference(trainer)
    import gc
    gc.collect()
    after_setup = rss_bytes() - base_rss
    from science_t2i.training.stage2.losses import Pair
    from science_t2i.training.stage2.rollouts import RolloutBatch, RolloutPrompt
    b = args.pairs
    lh = lw = MEM_RES // trainer.vae_scale
    c = trainer.unwrapped.config.in_channels
    d = trainer.unwrapped.config.joint_attention_dim
    p = trainer.unwrapped.config.pooled_projection_dim
    batch = RolloutBatch([RolloutPrompt(f"p{i}", "o") for i in range(b)], 2,
                         torch.zeros(2 * b, 8, 8, 3), torch.tensor([[1.0, 0.0]] * b),
                         torch.randn(2 * b, (lh // 2) * (lw // 2), c), torch.randn(2 * b, MEM_TEXT, d),
                         torch.randn(2 * b, p), None, lh, lw)
    pairs = [(0, Pair(i, 0, 1, 1.0)) for i in range(b)]
    # the peak while training (weights held + the step's work), not the transient of loading
    with PeakRSS() as mem:
        for _ in range(2):
            trainer.train_step(batch, pairs)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = mem.peak - base_rss
    weights = sum(t.numel() * t.element_size() for t in trainer.unwrapped.parameters())
    return {"peak_bytes": peak, "policy_param_bytes": weights, "after_setup_bytes": after_setup}


def _child_args(args: argparse.Namespace, work: Path) -> list[str]:
    out = ["--workdir", str(work)]
    for k in ("rounds", "steps", "pairs", "res", "threads", "sample_steps", "device",
              "precision"):
        out += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    return out


def run_child(name: str, args: argparse.Namespace, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", name, *_child_args(args, work)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if name.startswith("memory"):
        # glibc keeps freed buffers above its (self-raising) mmap threshold in the heap, so the
        # peak RSS would count reuse luck; a fixed threshold returns large buffers when freed
        # and the peak follows the live memory (as torch.cuda.max_memory_allocated on CUDA)
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    ap.add_argument("--pairs", type=int, default=1, help="pairs per Flow-DPO step (= SFT batch)")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--sample-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--child", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if args.child:
        fn = {"speed": child_speed, "ddp": child_ddp}.get(args.child, child_memory)
        result = fn(args)
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work)
        speed = run_child("speed", args, work)
        shared = run_child("memory-shared", args, work)
        copied = run_child("memory-copy", args, work)
        counted = counted_by_ddp(Path(__file__), _child_args(args, work))
    mib = 1 / 2 ** 20
    print(f"model: 2 double + 4 single blocks, 4 heads x 64, {args.res} px, "
          f"{args.pairs} pair(s) per step, {args.device}, {args.precision}, "
          f"{args.threads} thread(s)")
    print(f"SFT step            {speed['sft'] * 1e3:9.1f} ms")
    print(f"Flow-DPO step       {speed['flow-dpo'] * 1e3:9.1f} ms   "
          f"ratio {speed['flow-dpo'] / speed['sft']:.2f}x  (target <= 2.8x, FLOPs 2.67x)")
    w = shared["policy_param_bytes"]  # R: everything else at the peak
    print(f"memory model: FLUX.1's {MEM_DOUBLE} + {MEM_SINGLE} blocks at width "
          f"{MEM_HEADS * MEM_HEAD_DIM}, {MEM_RES} px + {MEM_TEXT} text tokens, gradient "
          f"checkpointing, LoRA rank {MEM_RANK}; weights held {w * mib:.1f}"
          f" MiB, rest of the step {(shared['peak_bytes'] - w) * mib:.1f} MiB "
          f"(W : R = {w / max(1, shared['peak_bytes'] - w):.1f} : 1; FLUX.1-dev ~12 : 1)")
    print(f"peak memory, adapter-disabled reference {shared['peak_bytes'] * mib:9.1f} MiB")
    print(f"peak memory, deep-copied reference      {copied['peak_bytes'] * mib:9.1f} MiB   "
          f"ratio {shared['peak_bytes'] / copied['peak_bytes']:.2f}x  (target <= 0.6x)")
    print(f"sampling, plain            {speed['sample'] * 1e3:9.1f} ms")
    print(f"sampling, with log-probs   {speed['sample+logprob'] * 1e3:9.1f} ms   "
          f"ratio {speed['sample+logprob'] / speed['sample']:.2f}x  (target <= 1.1x)")
    from stage2_round import flux_dev_lora_gradient_bytes
    print(f"all-reduced per optimizer step: {speed['grad_bytes']:,} bytes (the LoRA's fp32 "
          f"gradients); counted by DDP's hook in a 2-process run: {counted:,} bytes; "
          f"FLUX.1-dev with a rank-16 LoRA: {flux_dev_lora_gradient_bytes():,} bytes")


if __name__ == "__main__":
    main()
