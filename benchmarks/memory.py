"""The memory plan: peak GPU memory of an SFT step and of a stage-2 round for FLUX.1-dev at
full size, per memory tier (its base precision and batch sizes) and resolution, without a GPU
and without weights.

    python benchmarks/memory.py              # the table, and the method checked on this CPU
    python benchmarks/memory.py --json       # one JSON object per row
    python benchmarks/memory.py --write-plan # also rewrite training/configs/memory_plan.json

How each part is counted (``memory_model.py``):
- frozen transformer: exact bytes per layer shape, quantized by the trainers' own code
  (bf16 2 bytes per weight; int8 and fp8 1 byte plus a per-row scale; nf4 half a byte plus
  double-quantized block scales), said per base in the output;
- LoRA: fp32 parameters, gradients and AdamW's two moments (16 bytes per parameter);
- activations of each phase: the real model code on fake tensors, the live bytes followed
  op by op (GroundingDINO on real tensors: see ``gdino_peak``);
- a quantized base dequantizes one layer at a time: two bf16 copies of the largest layer;
- ``allocated_gib`` is what ``torch.cuda.max_memory_allocated`` would report; ``peak_gib``, what
  the card must hold, adds 10% of everything but the frozen weights (the caching allocator's
  rounding and fragmentation) and 0.5 GiB (CUDA context and cuBLAS workspace).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import memory_model as mm

ROOT = Path(__file__).resolve().parents[1]
PLAN_PATH = ROOT / "training" / "configs" / "memory_plan.json"
CONTEXT_GIB = 0.5
SLACK = 0.10
RESOLUTIONS = (512, 1024)
ROLLOUT_IMAGES = 16   # stage 2's default round: 8 prompts x 2 samples, decoded images kept


def _tiers():
    from science_t2i.training.flux.memory_tiers import TIERS, tier_settings
    return TIERS, tier_settings


@lru_cache(maxsize=None)
def weights(base: str) -> dict:
    return mm.transformer_weight_bytes(base)


@lru_cache(maxsize=None)
def step(batch: int, resolution: int, train: bool) -> dict:
    return mm.transformer_step_peak(batch=batch, resolution=resolution, train=train)


@lru_cache(maxsize=None)
def fixed() -> dict:
    return {"vae": mm.vae_weight_bytes(), "sciscore_fp16": mm.sciscore_weight_bytes(2),
            "sciscore_fp32": mm.sciscore_weight_bytes(4), "gdino": mm.gdino_weight_bytes(),
            "gdino_act": mm.gdino_peak()}


def _bases(tier_base: str) -> list[str]:
    return ["int8", "fp8"] if tier_base == "8bit" else [tier_base]


def _finish(row: dict, allocated: int, frozen: int, phases: dict) -> dict:
    G = mm.GiB
    peak = allocated + SLACK * (allocated - frozen) + CONTEXT_GIB * G
    row.update(allocated_gib=round(allocated / G, 2), peak_gib=round(peak / G, 2),
               phases={k: round(v / G, 2) for k, v in phases.items()})
    return row


def sft_row(tier: str, resolution: int, base: str, settings: dict) -> dict:
    b = settings["train.batch_size"]
    w = weights(base)
    act = step(b, resolution, True)
    lora = act["lora_params"] * 16
    transient = 0 if base == "bf16" else 2 * w["largest_linear_bf16"]
    allocated = w["bytes"] + lora + act["peak"] + transient
    return _finish({"trainer": "sft", "resolution": resolution, "base": base, "tier": tier,
                    "batch": b, "method": "fake tensors (activations) + exact weight count"},
                   allocated, w["bytes"], {"weights": w["bytes"], "lora_and_adam": lora,
                                           "step": act["peak"] + transient})


def stage2_row(tier: str, resolution: int, base: str, settings: dict) -> dict:
    f = fixed()
    rb, pairs = settings["rollout.batch_size"], settings["train.pairs_per_step"]
    reward_bs = settings["reward.batch_size"]
    reward_w = f["sciscore_fp16"] if settings.get("reward.dtype") == "auto" else f["sciscore_fp32"]
    w = weights(base)
    train = step(2 * pairs, resolution, True)
    lora = train["lora_params"] * 16
    transient = 0 if base == "bf16" else 2 * w["largest_linear_bf16"]
    images = ROLLOUT_IMAGES * 3 * resolution ** 2 * 4
    conditioning = rb * mm.TEXT_TOKENS * 4096 * 4
    resident = w["bytes"] + f["vae"] + lora + images
    phases = {
        "sample": step(rb, resolution, False)["peak"] + transient + conditioning,
        "decode": mm.vae_decode_peak(batch=rb, resolution=resolution),
        "score": reward_w + mm.sciscore_peak(batch=reward_bs) + reward_bs * 3 * 224 ** 2 * 4,
        "mask": f["gdino"] + f["gdino_act"],
        "train": train["peak"] + transient,
    }
    allocated = resident + max(phases.values())
    frozen = w["bytes"] + f["vae"] + (max(phases, key=phases.get) in ("score", "mask")) * \
        (reward_w if max(phases, key=phases.get) == "score" else f["gdino"])
    return _finish({"trainer": "stage2", "resolution": resolution, "base": base, "tier": tier,
                    "batch": rb, "method": "fake tensors (activations) + exact weight count; "
                    "GroundingDINO measured on real tensors"},
                   allocated, frozen, {"resident": resident, **phases})


def plan_rows() -> list[dict]:
    TIERS, tier_settings = _tiers()
    rows = []
    for tier, spec in TIERS.items():
        for trainer, build in (("sft", sft_row), ("stage2", stage2_row)):
            settings = tier_settings(tier, trainer)
            for res in RESOLUTIONS:
                for base in _bases(settings["model.base"]):
                    row = build(tier, res, base, settings)
                    row["card_gib"] = spec["gib"]
                    rows.append(row)
    return rows


# ----------------------------------------------------------------------------- validation

SMALL = mm.SMALL_FLUX


def real_step_rss() -> int:
    """The small model's training step for real (``--real-step``, run in a fresh process by
    ``_real_peak_rss``): the rise of the resident set, in bytes."""
    import torch
    from peak_rss import PeakRSS
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = mm.flux_transformer(SMALL, torch.float32)
    for p in mm.add_lora(model, 16):
        p.grad = torch.zeros_like(p)
    model.enable_gradient_checkpointing()
    model.train()

    def step() -> None:
        inputs = mm.flux_inputs(model, 1, 512, mm.TEXT_TOKENS, torch.float32)
        model(**inputs)[0].float().square().mean().backward()
    step()   # warm-up: lazily allocated buffers
    with PeakRSS() as rss:
        step()
    return rss.peak - rss.base


def _real_peak_rss() -> dict:
    """``real_step_rss`` in a fresh process, with glibc returning freed buffers so the
    resident set follows live memory."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, __file__, "--real-step"], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def validate() -> dict:
    """The method against a real measurement at a size this CPU runs: FLUX.1's layout with
    2 double + 4 single blocks of width 1024, fp32, 512 px, batch 1, checkpointing."""
    import torch
    fake = mm.transformer_step_peak(batch=1, resolution=512, train=True, config=SMALL,
                                    dtype=torch.float32)["peak"]
    real_tensors = mm.transformer_step_peak(batch=1, resolution=512, train=True, config=SMALL,
                                            fake=False, dtype=torch.float32)["peak"]
    rss = _real_peak_rss()["rss_rise"]
    return {"fake_gib": fake / mm.GiB, "real_tensors_gib": real_tensors / mm.GiB,
            "rss_rise_gib": rss / mm.GiB, "rss_vs_plan": rss / fake}


# ----------------------------------------------------------------------------- output

def write_plan(rows: list[dict]) -> None:
    keep = ("trainer", "resolution", "base", "tier", "peak_gib", "allocated_gib", "card_gib")
    data = {"about": "planned peak GPU memory, FLUX.1-dev at full size: benchmarks/memory.py",
            "context_gib": CONTEXT_GIB, "slack": SLACK,
            "rows": [{k: r[k] for k in keep} for r in rows]}
    tmp = PLAN_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, PLAN_PATH)


def print_table(rows: list[dict], check: dict | None) -> None:
    print("bytes per weight of the frozen transformer's linear layers (scales included):")
    for base in ("bf16", "int8", "fp8", "nf4"):
        w = weights(base)
        print(f"  {base:5s} {w['bytes_per_linear_weight']:.4f}   transformer "
              f"{w['bytes'] / mm.GiB:.2f} GiB")
    print()
    print("| trainer | tier | base | px | batch | allocated GiB | planned peak GiB | card | "
          "fits | largest phase |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        phases = {k: v for k, v in r["phases"].items() if k not in ("weights", "resident")}
        top = max(phases, key=phases.get)
        print(f"| {r['trainer']} | {r['tier']} | {r['base']} | {r['resolution']} | "
              f"{r['batch']} | {r['allocated_gib']:.1f} | {r['peak_gib']:.1f} | "
              f"{r['card_gib']} GB | {'yes' if r['peak_gib'] <= r['card_gib'] else 'no'} | "
              f"{top} {phases[top]:.2f} |")
    if check:
        print(f"\nmethod check (small FLUX, fp32, 512 px, real run on this CPU): plan "
              f"{check['fake_gib']:.3f} GiB, same count on real tensors "
              f"{check['real_tensors_gib']:.3f} GiB, resident-set rise "
              f"{check['rss_vs_plan']:.2f}x the plan ({check['rss_rise_gib']:.3f} GiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per row")
    ap.add_argument("--write-plan", action="store_true",
                    help=f"rewrite {PLAN_PATH.relative_to(ROOT)} (what the trainers print)")
    ap.add_argument("--no-check", action="store_true", help="skip the real-run method check")
    ap.add_argument("--real-step", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.real_step:   # the method check's child process
        print(json.dumps({"rss_rise": real_step_rss()}))
        return
    t0 = time.time()
    rows = plan_rows()
    check = None if args.no_check else validate()
    if args.json:
        for r in rows:
            print(json.dumps({k: r[k] for k in ("trainer", "resolution", "base", "tier",
                                                "peak_gib", "allocated_gib", "method")}))
        if check:
            print(json.dumps({"check": check}))
    else:
        print_table(rows, check)
        print(f"\n({time.time() - t0:.0f} s)")
    if args.write_plan:
        write_plan(rows)


if __name__ == "__main__":
    main()
