"""Stage-1 SFT speed and memory on CPU, measured side by side in one run.

A small-but-not-tiny random FLUX in the diffusers layout (16 latent channels and an 8x VAE like
FLUX.1; transformer with 2 double + 4 single blocks, 4 heads x 64; 256 px images -> 256 image
tokens + 128 T5 tokens) is trained with the pack's SFT trainer in four set-ups:
cached latents or live encoding, each with and without gradient checkpointing. Each set-up runs
in its own process (so peak memory is its own) and alternates blocks of trainer steps with
blocks of a bare loop on the same model and the same kind of inputs:
``forward -> MSE -> backward -> optimizer.step -> zero_grad`` on one prepared batch. The ratio
of the two is the trainer's overhead (data, noise, sigma sampling, packing, clipping, logging
of metrics); with live encoding it includes the VAE and text encoders run every step.

Times are the process's CPU time per step (with one thread, the compute; other processes on a
shared machine do not inflate it), median of alternating blocks; wall-clock is shown too.
Training peak memory is the process's resident set size, sampled every millisecond over the
first two trainer steps, minus its size just before (activations, gradients, optimizer state,
the encoders' work when encoding live); the process's max RSS includes the loaded models.

    python benchmarks/train.py [--steps 3] [--rounds 5] [--threads 1] [--batch 1] [--res 256]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ is the script's own folder
from allreduce import counted_by_ddp, gradient_bytes
from builders import step_spec, tiny_flux
from peak_rss import PeakRSS

os.environ.setdefault("SCIENCE_T2I_NO_PROGRESS", "1")

SETUPS = {  # name: (cache enabled, gradient checkpointing)
    "cached": (True, False),
    "cached+gc": (True, True),
    "live": (False, False),
    "live+gc": (False, True),
}


def build(workdir: Path, res: int) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image
    from science_t2i.training.core.datasets import write_jsonl_dataset
    tf = tiny_flux()
    tf.build_tiny_flux_pipeline(workdir / "flux", step_spec(tf))
    rng = np.random.default_rng(0)
    records = [{"implicit_prompt": [f"an object under condition {i}", f"scene number {i}"],
                "explicit_image": [Image.fromarray(rng.integers(0, 255, (res + 16 * i, res, 3),
                                                                dtype=np.uint8))
                                   for _ in range(2)]} for i in range(4)]
    return workdir / "flux", write_jsonl_dataset(records, workdir / "data")


def _trainer(args: argparse.Namespace, cache_on: bool, gc_on: bool):
    from science_t2i.training.core.config import load_config
    from science_t2i.training.sft.config import SFTConfig
    from science_t2i.training.sft.trainer import SFTTrainer
    work = Path(args.workdir)
    cfg = load_config(SFTConfig, None, [
        f"model.path={work / 'flux'}", f"data.path={work / 'data' / 'data.jsonl'}",
        "data.split=null", f"data.resolution={args.res}", f"output_dir={work / args.child}",
        f"cache.dir={work / 'cache'}", f"cache.enabled={str(cache_on).lower()}",
        "cache.max_sequence_length=128", "train.mixed_precision=fp32",
        f"train.batch_size={args.batch}", "train.grad_accum=1", "optim.lr=1e-4",
        f"train.gradient_checkpointing={str(gc_on).lower()}", "log.progress=false",
        "train.max_steps=100000"])
    return SFTTrainer(cfg).setup()


def child_ddp(args: argparse.Namespace) -> None:
    """Two SFT optimizer steps on every process; the bytes the DDP hook counted."""
    trainer = _trainer(args, True, False)
    for _ in range(2):
        metrics = trainer.train_step()
    if trainer.is_main:
        print(json.dumps({"allreduce_bytes": metrics["allreduce_bytes"]}))


def child(args: argparse.Namespace) -> None:
    import torch
    from science_t2i.training.flux.flow_matching import flow_matching_loss

    torch.set_num_threads(args.threads)
    trainer = _trainer(args, *SETUPS[args.child])
    model = trainer.transformer
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    batch = trainer.model_inputs(trainer.micro_batch(0))
    kwargs = {k: v for k, v in batch.items() if k != "target"}

    def bare_step() -> None:
        pred = model(**kwargs, return_dict=False)[0]
        flow_matching_loss(pred, batch["target"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # memory first: RSS only shows a peak the first time memory is touched
    with PeakRSS() as mem:
        for _ in range(2):  # also the warm-up: allocator, lazy inits, optimizer state
            trainer.train_step()
    for _ in range(2):
        bare_step()
    # CPU time of this process: other processes on a shared machine do not inflate it
    times: dict[str, list[float]] = {"trainer": [], "bare": []}
    wall: dict[str, list[float]] = {"trainer": [], "bare": []}
    for _ in range(args.rounds):
        for name, fn in (("trainer", trainer.train_step), ("bare", bare_step)):
            t0, w0 = time.process_time(), time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.process_time() - t0) / args.steps * 1000)
            wall[name].append((time.perf_counter() - w0) / args.steps * 1000)
    import resource
    print(json.dumps({
        "setup": args.child,
        "trainer_ms": statistics.median(times["trainer"]),
        "bare_ms": statistics.median(times["bare"]),
        "trainer_wall_ms": statistics.median(wall["trainer"]),
        "bare_wall_ms": statistics.median(wall["bare"]),
        "peak_mib": (mem.peak - mem.base) / 2**20,
        "process_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "transformer_params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "lora_params_m": sum(p.numel() for p in trainer.params) / 1e6,
        "grad_bytes": gradient_bytes(trainer.params),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=5, help="alternating blocks per side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--child", choices=[*SETUPS, "ddp"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "ddp":
        child_ddp(args)
        return
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work, args.res)
        # fill the cache once, outside the measured processes
        subprocess.run([sys.executable, __file__, "--child", "cached", "--workdir", tmp,
                        "--steps", "1", "--rounds", "1", "--res", str(args.res),
                        "--batch", str(args.batch), "--threads", str(args.threads)],
                       check=True, capture_output=True)
        rows = []
        for name in SETUPS:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--workdir", tmp,
                                  "--steps", str(args.steps), "--rounds", str(args.rounds),
                                  "--res", str(args.res), "--batch", str(args.batch),
                                  "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        counted = counted_by_ddp(Path(__file__), ["--workdir", tmp, "--res", str(args.res),
                                                  "--batch", str(args.batch)])
    r0 = rows[0]
    print(f"FLUX-shaped random model: {r0['transformer_params_m']:.1f}M transformer params, "
          f"{r0['lora_params_m']:.3f}M LoRA params; {args.res}px, batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.rounds} alternating blocks x {args.steps} "
          "steps per side; ms = CPU time per step (wall-clock in brackets)")
    print(f"{'setup':<11}{'trainer ms/step':>22}{'bare ms/step':>20}{'overhead':>10}"
          f"{'training peak MiB':>19}{'process max RSS MiB':>21}")
    for r in rows:
        over = r["trainer_ms"] / r["bare_ms"] - 1
        tw = f"{r['trainer_ms']:.0f} ({r['trainer_wall_ms']:.0f})"
        bw = f"{r['bare_ms']:.0f} ({r['bare_wall_ms']:.0f})"
        print(f"{r['setup']:<11}{tw:>22}{bw:>20}{over:>+10.1%}"
              f"{r['peak_mib']:>19.1f}{r['process_max_rss_mib']:>21.0f}")
    c, g = rows[0], rows[1]
    print(f"gradient checkpointing: {g['trainer_ms'] / c['trainer_ms']:.2f}x time, "
          f"{g['peak_mib'] / max(c['peak_mib'], 1e-9):.2f}x training peak memory "
          "(cached latents)")
    print(f"live encoding vs cached: {rows[2]['trainer_ms'] / c['trainer_ms']:.2f}x time per step")
    from stage2_round import flux_dev_lora_gradient_bytes
    print(f"all-reduced per optimizer step: {c['grad_bytes']:,} bytes (the LoRA's fp32 "
          f"gradients); counted by DDP's hook in a 2-process run: {counted:,} bytes; "
          f"FLUX.1-dev with a rank-16 LoRA: {flux_dev_lora_gradient_bytes():,} bytes")


if __name__ == "__main__":
    main()
