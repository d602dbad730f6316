"""Train (or extend) SciScore: the paper's three-term preference loss on Science-T2I records.

The loop is deliberately plain: one optimizer step = ``batch_size`` samples, split into
micro-batches of ``micro_batch_size`` per device and accumulated. The sample stream, the
checkpoint and the schedule all derive from the step number, so a run resumed from a
checkpoint continues exactly as if it had never stopped. Every ``eval.every`` steps the model
is scored on the held-out split with the paper's accuracy protocol (the same code as
``science-t2i eval-reward``); the best model so far is written as a SciScore folder in the
release layout, which the SciScore Loader node opens directly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..nodes.errors import ScienceT2IError
from ..nodes.files import atomic_directory, write_json_atomic
from .checkpoints import CheckpointManager, capture_rng_state, restore_rng_state
from .config import config_to_dict, save_config
from .run_log import RunLog
from .sciscore_data import (TRAIN_FIELDS, ImageSpec, SampleStream, SciScoreBatch,
                            check_records, split_held_out)
from .sciscore_loss import DEFAULT_LAMBDA, sciscore_loss

log = logging.getLogger("science_t2i")

BEST_DIR = "best"
EVAL_FILE = "sciscore_eval.json"  # written inside the best folder: the scores behind its pick
PLOT_KEYS = ("loss", "train_accuracy", "eval_accuracy", "lr")


# ----------------------------------------------------------------------------- config

@dataclass
class DataConfig:
    path: str = ""                  # Science-T2I-format dataset (save_to_disk, parquet, JSON)
    split: str = "train"            # "" = the dataset's only split
    eval_path: str = ""             # held-out dataset; "" = the training dataset
    eval_split: str = "test"        # its split ("" = its only split)
    eval_fraction: float = 0.0      # > 0: hold out this fraction of the training records instead
    eval_limit: int = 0             # score at most this many held-out records (0 = all)
    augment: bool = False           # random crop + flip; off, as in the paper
    num_workers: int = 4            # image loading threads


@dataclass
class ModelConfig:
    # the paper fine-tunes CLIP-H; continue from SciScore itself to extend it to new data
    init: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    freeze_text_tower: bool = False
    freeze_vision_tower: bool = False
    freeze_logit_scale: bool = False
    gradient_checkpointing: bool = False


@dataclass
class OptimConfig:
    lr: float = 2e-6
    weight_decay: float = 0.3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["warmup_linear_decay", "warmup_cosine", "warmup_constant"] = \
        "warmup_linear_decay"
    warmup_steps: int = 150
    max_steps: int = 600
    grad_clip: float = 1.0          # 0 = no clipping
    batch_size: int = 1024          # samples per optimizer step, over all devices
    micro_batch_size: int = 16      # samples per forward/backward on one device


@dataclass
class LossConfig:
    lambda_: float = DEFAULT_LAMBDA  # weight of the two image-side terms


@dataclass
class EvalConfig:
    every: int = 10                 # steps between held-out evaluations
    at_start: bool = True           # also evaluate the starting model (step 0)
    batch_size: int = 32            # images per scoring batch


@dataclass
class SciScoreTrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: Path = Path("outputs/sciscore")
    seed: int = 0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA
    save_every: int = 50            # steps between resumable checkpoints (and at the end)
    keep_last: int = 2              # resumable checkpoints kept (0 = all)
    save_final: bool = False        # also write the last model as a SciScore folder "final"
    progress: bool = True
    plot_curves: bool = True        # curves.png (loss, accuracies, lr) when the run ends


def check_config(cfg: SciScoreTrainConfig, world_size: int = 1) -> int:
    """Validate the settings that types alone cannot; returns the accumulation steps."""
    o = cfg.optim
    if not cfg.data.path:
        raise ScienceT2IError("data.path is not set: point it at a Science-T2I-format dataset "
                              "(save_to_disk folder, parquet shards or JSON/JSONL records), "
                              "e.g. data.path=/data/Science-T2I-Fullset.")
    for name, value in (("optim.max_steps", o.max_steps), ("optim.batch_size", o.batch_size),
                        ("optim.micro_batch_size", o.micro_batch_size),
                        ("eval.every", cfg.eval.every), ("eval.batch_size", cfg.eval.batch_size),
                        ("save_every", cfg.save_every)):
        if value <= 0:
            raise ScienceT2IError(f"{name} must be a positive integer; got {value}.")
    if o.lr <= 0:
        raise ScienceT2IError(f"optim.lr must be positive; got {o.lr}.")
    if o.warmup_steps < 0:
        raise ScienceT2IError(f"optim.warmup_steps must be >= 0; got {o.warmup_steps}.")
    per_step = o.micro_batch_size * world_size
    if o.batch_size % per_step:
        raise ScienceT2IError(
            f"optim.batch_size={o.batch_size} is not a multiple of micro_batch_size "
            f"{o.micro_batch_size} x {world_size} device(s) = {per_step}; choose e.g. "
            f"optim.batch_size={max(1, round(o.batch_size / per_step)) * per_step}.")
    if (cfg.model.freeze_text_tower and cfg.model.freeze_vision_tower
            and cfg.model.freeze_logit_scale):
        raise ScienceT2IError("every part of the model is frozen (text tower, vision tower and "
                              "logit_scale): unfreeze at least one to train.")
    return o.batch_size // per_step


# ----------------------------------------------------------------------------- model

class DualEncoder(torch.nn.Module):
    """CLIP's two towers behind one forward, so DDP sees every trainable parameter used."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        text = _projected(self.clip.get_text_features(input_ids=input_ids,
                                                      attention_mask=attention_mask))
        image = _projected(self.clip.get_image_features(pixel_values=pixel_values))
        return text, image, self.clip.logit_scale


def _projected(out: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projection; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def batch_loss(model: torch.nn.Module, batch: SciScoreBatch, lambda_: float):
    text, image, logit_scale = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
    ip, ep, sp = text.chunk(3)
    i_exp, i_sup = image.chunk(2)
    return sciscore_loss(ip, ep, sp, i_exp, i_sup, logit_scale, lambda_=lambda_)


def set_trainable(clip: torch.nn.Module, cfg: ModelConfig) -> list[torch.nn.Parameter]:
    clip.requires_grad_(True)
    if cfg.freeze_text_tower:
        clip.text_model.requires_grad_(False)
        clip.text_projection.requires_grad_(False)
    if cfg.freeze_vision_tower:
        clip.vision_model.requires_grad_(False)
        clip.visual_projection.requires_grad_(False)
    if cfg.freeze_logit_scale:
        clip.logit_scale.requires_grad_(False)
    return [p for p in clip.parameters() if p.requires_grad]


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base lr at scheduler step ``s``: linear warmup, then the decay."""
    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / (warmup + 1)
        if schedule == "warmup_constant":
            return 1.0
        span = max(1, total - warmup)
        progress = min(1.0, (s - warmup) / span)
        if schedule == "warmup_cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)
    return f


# ----------------------------------------------------------------------------- saving

def save_sciscore_folder(clip: torch.nn.Module, tokenizer: Any, image_cfg: dict[str, Any],
                         target: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a SciScore folder in the release layout (config.json, model.safetensors,
    tokenizer files, preprocessor_config.json), atomically: into a temporary folder beside
    ``target``, then renamed over it, so a crash never leaves a half-written best model."""
    with atomic_directory(target) as tmp:
        clip.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / "preprocessor_config.json", _preprocessor_json(image_cfg))
        if extra is not None:
            write_json_atomic(tmp / EVAL_FILE, extra)
    return target


def _preprocessor_json(image_cfg: dict[str, Any]) -> dict[str, Any]:
    raw = dict(image_cfg.get("raw") or {})
    if raw:
        return raw
    return {"image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
            "do_resize": True, "size": {"shortest_edge": int(image_cfg["size"])},
            "resample": 3, "do_center_crop": True,
            "crop_size": {"height": int(image_cfg["crop_size"]),
                          "width": int(image_cfg["crop_size"])},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(image_cfg["image_mean"]),
            "image_std": list(image_cfg["image_std"]), "do_convert_rgb": True}


# ----------------------------------------------------------------------------- data

def _split(name: str) -> str | None:
    return name or None


def load_splits(cfg: SciScoreTrainConfig) -> tuple[list, list]:
    """(training records, held-out records), both checked."""
    from .datasets import load_records
    d = cfg.data
    train = load_records(d.path, _split(d.split), require=TRAIN_FIELDS)
    if d.eval_fraction > 0:
        if d.eval_path:
            raise ScienceT2IError("set either data.eval_path (a separate held-out split) or "
                                  "data.eval_fraction (hold out part of the training split), "
                                  "not both.")
        train, held = split_held_out(train, d.eval_fraction, cfg.seed)
    else:
        held = load_records(d.eval_path or d.path, _split(d.eval_split),
                            require=("implicit_prompt", "explicit_image", "superficial_image"))
    if d.eval_limit > 0:
        held = held[:d.eval_limit]
    check_records(train, "training")
    check_records(held, "held-out", need_all=False)
    return train, held


# ----------------------------------------------------------------------------- evaluation

def evaluate_held_out(clip: torch.nn.Module, tokenizer: Any, image_cfg: dict[str, Any],
                      records: list, device: torch.device, batch_size: int) -> dict[str, Any]:
    """The paper's reward accuracy of the current weights on the held-out records."""
    from .evaluate import reward_accuracy
    scorer = training_scorer(clip, tokenizer, image_cfg, device, batch_size)
    return reward_accuracy(records, scorer, batch_records=max(1, batch_size // 2))


def training_scorer(clip: torch.nn.Module, tokenizer: Any, image_cfg: dict[str, Any],
                    device: torch.device, batch_size: int) -> Any:
    """The SciScore scorer (the Loader node's scoring code) around the weights being trained.

    Built fresh for every evaluation, so no text embedding cached before the last update is
    reused.
    """
    from ..nodes.sciscore import SciScoreModel
    return SciScoreModel.from_clip(clip, tokenizer, image_cfg, name="training", device=device,
                                   batch_size=batch_size)


# ----------------------------------------------------------------------------- the run

@dataclass
class TrainResult:
    output_dir: Path
    steps_done: int
    best_dir: Path | None
    best_step: int
    best_accuracy: float
    history: list[dict[str, Any]]


def _mixed_precision(cfg: SciScoreTrainConfig) -> str:
    if cfg.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    if cfg.mixed_precision in ("bf16", "fp16") and not torch.cuda.is_available():
        log.warning("mixed_precision=%s needs CUDA; training in fp32 on CPU", cfg.mixed_precision)
        return "no"
    return cfg.mixed_precision


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resume_digest(cfg: SciScoreTrainConfig) -> str:
    """What must not change between a run and its resumption. The step count, evaluation,
    checkpoint and progress settings may (e.g. to extend a finished run)."""
    d = config_to_dict(cfg)
    keep = {k: d[k] for k in ("data", "model", "loss", "seed", "mixed_precision")}
    keep["optim"] = {k: v for k, v in d["optim"].items() if k != "max_steps"}
    keep["data"] = {k: v for k, v in d["data"].items()
                    if k not in ("num_workers", "eval_path", "eval_split", "eval_limit")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def train_sciscore(cfg: SciScoreTrainConfig, resume: bool = False, *,
                   stop_after: int | None = None) -> TrainResult:
    """Train as configured; with ``resume``, continue from the latest checkpoint in
    ``output_dir``. ``stop_after`` ends this call after that many optimizer steps, as an
    interruption would (a checkpoint is saved first)."""
    from accelerate import Accelerator

    from ..nodes import _comfy
    from ..nodes.sciscore_loading import load_clip_directory, resolve_source

    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg),
                              cpu=not torch.cuda.is_available())
    accum = check_config(cfg, accelerator.num_processes)
    out = Path(cfg.output_dir)
    _seed_everything(cfg.seed)

    # a resume that cannot work fails before the data and model are loaded
    ckpts = CheckpointManager(out / "checkpoints", keep_last=cfg.keep_last)
    run_log = RunLog(out)
    digest = resume_digest(cfg)
    state = None
    if resume:
        latest, state = ckpts.load_for_resume(
            digest, "optim.max_steps and the evaluation, checkpoint, logging and loader settings")

    train_records, held_records = load_splits(cfg)
    clip, tokenizer, image_cfg = load_clip_directory(resolve_source(cfg.model.init),
                                                     dtype=torch.float32)
    clip.train()
    params = set_trainable(clip, cfg.model)
    if cfg.model.gradient_checkpointing:
        clip.gradient_checkpointing_enable()
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(o.schedule, o.warmup_steps, o.max_steps))
    model, optimizer = accelerator.prepare(DualEncoder(clip), optimizer)
    unwrapped = accelerator.unwrap_model(model).clip

    step, best_step, best_acc = 0, -1, -1.0
    if state is not None:
        unwrapped.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        step, best_step, best_acc = int(state["step"]), int(state["best_step"]), \
            float(state["best_accuracy"])
        if accelerator.is_main_process:
            run_log.truncate_after(step)
        log.info("resumed from %s at step %d", latest, step)
        del state
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if run_log.path.exists():  # a new run in an old folder: start a new log
            run_log.path.unlink()
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")

    spec = ImageSpec.from_image_config(image_cfg)
    stream = SampleStream(train_records, tokenizer, spec, seed=cfg.seed,
                          augment=cfg.data.augment, num_workers=cfg.data.num_workers)
    device = accelerator.device
    world, rank, m = accelerator.num_processes, accelerator.process_index, o.micro_batch_size

    def sample_numbers(t: int, micro: int) -> list[int]:
        base = t * o.batch_size + (micro * world + rank) * m
        return list(range(base, base + m))

    def evaluate(at_step: int) -> None:
        nonlocal best_step, best_acc
        if accelerator.is_main_process:
            was_training = unwrapped.training
            unwrapped.eval()
            with torch.no_grad():
                result = evaluate_held_out(unwrapped, tokenizer, image_cfg, held_records,
                                           device, cfg.eval.batch_size)
            unwrapped.train(was_training)
            acc = float(result["overall"]["accuracy"])
            run_log.log(at_step, eval_accuracy=acc, eval_records=len(held_records),
                        eval_by_task={k: v["accuracy"] for k, v in result["by_task"].items()})
            log.info("step %d: held-out accuracy %.4f", at_step, acc)
            if acc > best_acc:
                best_acc, best_step = acc, at_step
                save_sciscore_folder(unwrapped, tokenizer, image_cfg, out / BEST_DIR,
                                     extra={"step": at_step, **_plain_eval(result)})
        accelerator.wait_for_everyone()

    def save_checkpoint(at_step: int) -> None:
        if accelerator.is_main_process:
            ckpts.save(at_step, {
                "step": at_step, "model": unwrapped.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": capture_rng_state(), "best_step": best_step,
                "best_accuracy": best_acc, "resume_digest": digest,
            })
        accelerator.wait_for_everyone()

    if step == 0 and cfg.eval.at_start:
        evaluate(0)

    from concurrent.futures import ThreadPoolExecutor
    prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sciscore-prefetch")
    plan = [(t, i) for t in range(step, o.max_steps) for i in range(accum)]
    pending = prefetch.submit(stream.batch, sample_numbers(*plan[0])) if plan else None
    pos = 0
    stop_at = o.max_steps if stop_after is None else min(o.max_steps, step + stop_after)
    bar = _comfy.Progress(o.max_steps, desc="SciScore", enabled=cfg.progress and
                          accelerator.is_main_process)
    bar.update(step)
    try:
        while step < stop_at:
            _comfy.check_interrupt()
            sums: dict[str, float] = {}
            for micro in range(accum):
                batch = pending.result().to(device)
                pos += 1
                pending = (prefetch.submit(stream.batch, sample_numbers(*plan[pos]))
                           if pos < len(plan) else None)
                sync = micro == accum - 1
                ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
                with ctx:
                    parts = batch_loss(model, batch, cfg.loss.lambda_)
                    # summed over the micro-batch (as the reference); averaged over accumulation
                    accelerator.backward(parts.loss / accum)
                for k, v in parts.metrics().items():
                    sums[k] = sums.get(k, 0.0) + v / accum
            grad_norm = None
            if o.grad_clip > 0:
                grad_norm = accelerator.clip_grad_norm_(params, o.grad_clip)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            metrics = {k: float(accelerator.reduce(torch.tensor(v, device=device), "mean"))
                       for k, v in sums.items()}
            if accelerator.is_main_process:
                run_log.log(step, lr=lr, logit_scale=float(unwrapped.logit_scale.detach().exp()),
                            grad_norm=None if grad_norm is None else float(grad_norm), **metrics)
            if step % cfg.eval.every == 0 or step == o.max_steps:
                evaluate(step)
            if step % cfg.save_every == 0 or step == stop_at:
                save_checkpoint(step)
    finally:
        bar.close()
        if pending is not None:
            pending.cancel()
        prefetch.shutdown(wait=True, cancel_futures=True)
        stream.close()

    if accelerator.is_main_process:
        if step == o.max_steps and cfg.save_final:
            save_sciscore_folder(unwrapped, tokenizer, image_cfg, out / "final")
        if cfg.plot_curves:
            run_log.plot(PLOT_KEYS, out / "curves.png")
    return TrainResult(output_dir=out, steps_done=step,
                       best_dir=(out / BEST_DIR) if (out / BEST_DIR).is_dir() else None,
                       best_step=best_step, best_accuracy=best_acc, history=run_log.records())


def _plain_eval(result: dict[str, Any]) -> dict[str, Any]:
    """The evaluation result as JSON (tensors and numbers as plain floats)."""
    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.tolist()
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if hasattr(v, "__dataclass_fields__"):
            return plain(config_to_dict(v))
        return v
    return plain(result)
