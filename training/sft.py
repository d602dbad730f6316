"""Stage 1 of Science-T2I: rectified-flow LoRA fine-tuning (SFT) of FLUX.

Each sample pairs a random implicit prompt of a record with a random explicit image of the same
record, as the paper does. VAE latents and text embeddings are cached on disk first
(``latent_cache``), so the loop only holds the transformer. The loop is deterministic given the
seed: every random draw of a micro-batch comes from a generator seeded by (seed, micro-batch
index, process), so a resumed run continues exactly as if it had never stopped.

Run it with ``science-t2i sft --config FILE [key=value ...] [--resume]``; multi-GPU with
``accelerate launch -m science_t2i.training.cli sft ...``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from ..nodes.errors import ScienceT2IError
from .checkpoints import CheckpointManager, capture_rng_state, restore_rng_state
from .config import (config_digest, config_to_dict, require_at_least, save_config,
                     settings_digest)
from .flux_math import (flow_matching_loss, flow_target, latent_image_ids, noisy_latents,
                        pack_latents, sample_sigmas, text_ids)
from .flux_model import LORA_TARGETS
from .run_log import RunLog

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- configuration

@dataclass
class ModelSection:
    path: str = "black-forest-labs/FLUX.1-dev"   # a diffusers FLUX folder (or a Hub id)


@dataclass
class LoraSection:
    rank: int = 16
    alpha: float = 16.0
    init: str = "gaussian"
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass
class OptimSection:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0        # 0 disables clipping
    warmup_steps: int = 0             # linear warmup, then constant
    use_8bit: bool = False            # bitsandbytes AdamW8bit (CUDA only)


@dataclass
class DataSection:
    path: str = ""                    # Science-T2I-format dataset folder/file (see datasets.py)
    split: Optional[str] = "train"
    resolution: int = 512
    upscale_small: bool = False       # refuse images smaller than resolution unless true


@dataclass
class CacheSection:
    enabled: bool = True              # false: encode every batch live (encoders stay loaded)
    dir: str = ""                     # default <output_dir>/latent_cache
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 on CUDA, fp32 on CPU
    batch_size: int = 8
    max_sequence_length: int = 512    # T5 tokens, as FluxPipeline


@dataclass
class TrainSection:
    max_steps: int = 1000             # optimizer steps
    batch_size: int = 4               # per process and micro-batch
    grad_accum: int = 8
    seed: int = 0
    mixed_precision: Literal["bf16", "fp16", "fp32"] = "bf16"   # fp32 on CPU (see below)
    gradient_checkpointing: bool = True
    guidance: float = 0.0             # FLUX.1-dev guidance embedding value
    timestep_sampling: Literal["uniform", "logit_normal", "mode"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29


@dataclass
class CheckpointSection:
    every: int = 100                  # optimizer steps; 0 = only at the end
    keep_last: int = 3


@dataclass
class LogSection:
    every: int = 1
    plot_every: int = 50              # loss-curve PNG; 0 = only at the end
    progress: bool = True


@dataclass
class SampleSection:
    prompts: list[str] = field(default_factory=list)
    every: int = 0                    # 0 = only at the end (when prompts are given)
    steps: int = 20
    seed: int = 0


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft"
    lora_name: str = "science_t2i_sft.safetensors"
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=OptimSection)
    data: DataSection = field(default_factory=DataSection)
    cache: CacheSection = field(default_factory=CacheSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    sample: SampleSection = field(default_factory=SampleSection)

    def __post_init__(self) -> None:
        t = self.train
        require_at_least((("train.max_steps", t.max_steps, 1),
                          ("train.batch_size", t.batch_size, 1),
                          ("train.grad_accum", t.grad_accum, 1),
                          ("data.resolution", self.data.resolution, 16),
                          ("cache.batch_size", self.cache.batch_size, 1),
                          ("log.every", self.log.every, 1)))
        if self.optim.lr <= 0:
            raise ScienceT2IError(f"optim.lr must be > 0; got {self.optim.lr}.")


def resume_digest(cfg: SFTConfig) -> str:
    """What must not change between a run and its resumption (the rest, e.g. max_steps,
    checkpoint and log frequency, may)."""
    d = config_to_dict(cfg)
    keep = {k: d[k] for k in ("model", "lora", "optim", "data")}
    keep["train"] = {k: v for k, v in d["train"].items() if k != "max_steps"}
    keep["cache"] = {k: d["cache"][k] for k in ("dtype", "max_sequence_length")}
    return settings_digest(keep)


# ----------------------------------------------------------------------------- helpers

def _seed_for(*parts: int) -> int:
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> str:
    """Mixed precision actually used, in accelerate's terms ("bf16", "fp16" or "no" = fp32).

    On CPU it is always fp32, with a warning when bf16/fp16 was asked for (the default):
    half-precision training on CPU is slow and not what the paper's numbers use.
    """
    if requested == "fp32":
        return "no"
    if device.type != "cuda":
        log.warning("train.mixed_precision=%s needs CUDA; training in fp32 on %s "
                    "(set train.mixed_precision=fp32 to silence this)", requested, device.type)
        return "no"
    return requested


def make_accelerator(mixed_precision: str) -> tuple[Any, str]:
    """The trainers' Accelerator (device, mixed precision, process group) and the precision it
    uses, in accelerate's terms. The device decides the precision, and accelerate's shared state
    keeps the first precision it is given, so the device comes from PartialState (which sets no
    precision) before the one Accelerator is created."""
    from accelerate import Accelerator, PartialState
    cpu = not torch.cuda.is_available()
    precision = resolve_precision(mixed_precision, PartialState(cpu=cpu).device)
    return Accelerator(mixed_precision=precision, cpu=cpu), precision


def prepare_lora_training(acc: Any, transformer: torch.nn.Module, cfg: Any,
                          device: torch.device) -> tuple[list, Any, Any, Any]:
    """The LoRA both FLUX trainers train (``cfg.lora``), gradient checkpointing when
    ``cfg.train`` asks for it, the optimizer (``cfg.optim``) with its linear warm-up, and
    accelerate's preparation: (parameters, transformer, optimizer, scheduler). Seed the
    global RNGs first: the LoRA's initial weights come from them."""
    from .flux_model import attach_lora, make_optimizer
    params = attach_lora(transformer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.init,
                         cfg.lora.targets)
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    o = cfg.optim
    optimizer = make_optimizer(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                               eps=o.eps, use_8bit=o.use_8bit, device=device)
    warmup = o.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
    prepared, optimizer = acc.prepare(transformer, optimizer)
    return params, prepared, optimizer, scheduler


@dataclass
class Sample:
    """One micro-batch on the device: cached VAE posterior and text embeddings."""
    mean: torch.Tensor      # [B, C, h, w]
    std: torch.Tensor
    t5: torch.Tensor        # [B, L, D]
    pooled: torch.Tensor    # [B, P]


# ----------------------------------------------------------------------------- trainer

class SFTTrainer:
    """Builds everything from an :class:`SFTConfig`; ``run()`` trains to ``train.max_steps``."""

    def __init__(self, cfg: SFTConfig, resume: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.output_dir = Path(cfg.output_dir).expanduser()
        self.step = 0
        self._perms: dict[int, torch.Tensor] = {}

    # ---------------------------------------------------------------- setup
    def setup(self) -> "SFTTrainer":
        from .datasets import load_records
        from .flux_model import (FluxEncoders, load_transformer,
                                 resolve_flux_dir, vae_scale_factor)
        from .latent_cache import LatentCache, build_cache

        cfg = self.cfg
        if not cfg.data.path:
            raise ScienceT2IError("data.path is not set; point it at a Science-T2I-format "
                                  "dataset (save_to_disk folder, parquet or JSON/JSONL).")
        self.accelerator, precision = make_accelerator(cfg.train.mixed_precision)
        acc = self.accelerator
        self.device = acc.device
        self.precision = precision
        self.model_dir = resolve_flux_dir(cfg.model.path)
        self.vae_scale = vae_scale_factor(self.model_dir)
        if cfg.data.resolution % (2 * self.vae_scale):
            raise ScienceT2IError(f"data.resolution {cfg.data.resolution} must be a multiple "
                                  f"of {2 * self.vae_scale} (VAE downsampling x 2x2 packing).")
        weight_dtype = _DTYPES.get(precision, torch.float32) if precision != "no" else torch.float32
        cache_dtype = (_DTYPES[cfg.cache.dtype] if cfg.cache.dtype != "auto" else
                       (torch.bfloat16 if self.device.type == "cuda" else torch.float32))

        records = load_records(cfg.data.path, cfg.data.split,
                               require=("implicit_prompt", "explicit_image"))
        self.encoders = FluxEncoders(self.model_dir, self.device, weight_dtype,
                                     cfg.cache.max_sequence_length)
        self.shift, self.scale = self.encoders.latent_scaling()
        if cfg.cache.enabled:
            cache_dir = Path(cfg.cache.dir).expanduser() if cfg.cache.dir else \
                self.output_dir / "latent_cache"
            self.cache = LatentCache(cache_dir)
            with acc.main_process_first():  # one process fills it, the others then read it
                self.cache.refresh()
                self.items, self.sample_keys = build_cache(
                    records, self.encoders, self.cache, resolution=cfg.data.resolution,
                    upscale_small=cfg.data.upscale_small, batch_size=cfg.cache.batch_size,
                    cache_dtype=cache_dtype, extra_prompts=cfg.sample.prompts,
                    progress=cfg.log.progress and acc.is_local_main_process)
            self.encoders.release()
        else:
            self.cache = None
            self.items = records
            self.sample_keys = {}
            from .latent_cache import load_image_tensor
            for rec in records:  # fail now, not mid-run, on a bad image
                if not rec.implicit_prompts:
                    raise ScienceT2IError(f"record {rec.index} has no implicit prompt.")
                for ref in rec.explicit_images:
                    load_image_tensor(ref, cfg.data.resolution, cfg.data.upscale_small)

        transformer = load_transformer(self.model_dir, weight_dtype, self.device)
        # the LoRA's gaussian init draws from the global RNGs: seed them so runs repeat
        from accelerate.utils import set_seed
        set_seed(cfg.train.seed)
        self.guidance_embeds = bool(getattr(transformer.config, "guidance_embeds", False))
        (self.params, self.transformer, self.optimizer,
         self.scheduler) = prepare_lora_training(acc, transformer, cfg, self.device)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints",
                                             cfg.checkpoint.keep_last)
        self.run_log = RunLog(self.output_dir)
        if self.resume:
            self._resume()
        return self

    def _resume(self) -> None:
        from .flux_model import load_lora_state
        path, state = self.checkpoints.load_for_resume(
            resume_digest(self.cfg), "train.max_steps, checkpoint.*, log.* and sample.*")
        load_lora_state(self.accelerator.unwrap_model(self.transformer), state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.step = int(state["step"])
        if self.accelerator.is_main_process:
            self.run_log.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------- data
    def _record_at(self, global_index: int) -> int:
        n = len(self.items)
        epoch, pos = divmod(global_index, n)
        perm = self._perms.get(epoch)
        if perm is None:
            g = torch.Generator().manual_seed(_seed_for(self.cfg.train.seed, 7, epoch))
            perm = torch.randperm(n, generator=g)
            self._perms = {epoch: perm}  # only the current epoch is needed
        return int(perm[pos])

    def micro_batch(self, micro_step: int) -> tuple[Sample, torch.Generator]:
        """The micro-batch ``micro_step`` of this process, and the generator for its noise."""
        cfg, acc = self.cfg, self.accelerator
        b = cfg.train.batch_size
        g = torch.Generator().manual_seed(
            _seed_for(cfg.train.seed, micro_step, acc.process_index))
        first = (micro_step * acc.num_processes + acc.process_index) * b
        picks = []
        for j in range(b):
            item = self.items[self._record_at(first + j)]
            prompts = item.prompt_keys if self.cache is not None else item.implicit_prompts
            images = item.image_keys if self.cache is not None else item.explicit_images
            p = int(torch.randint(len(prompts), (1,), generator=g))
            i = int(torch.randint(len(images), (1,), generator=g))
            picks.append((prompts[p], images[i]))
        return self._fetch(picks), g

    def _fetch(self, picks: list[tuple[Any, Any]]) -> Sample:
        dev = self.device
        if self.cache is not None:
            txt = [self.cache.get(p, ("t5", "pooled")) for p, _ in picks]
            img = [self.cache.get(i, ("mean", "std")) for _, i in picks]
            return Sample(torch.stack([e["mean"] for e in img]).float().to(dev),
                          torch.stack([e["std"] for e in img]).float().to(dev),
                          torch.stack([e["t5"] for e in txt]).float().to(dev),
                          torch.stack([e["pooled"] for e in txt]).float().to(dev))
        from .latent_cache import load_image_tensor
        res, up = self.cfg.data.resolution, self.cfg.data.upscale_small
        seq, pooled = self.encoders.encode_prompts([p for p, _ in picks])
        pixels = torch.stack([load_image_tensor(ref, res, up) for _, ref in picks])
        mean, std = self.encoders.encode_images(pixels)
        return Sample(mean.float(), std.float(), seq.float(), pooled.float())

    # ---------------------------------------------------------------- maths
    def model_inputs(self, s: Sample, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw x0 from the VAE posterior, noise and sigma; build the packed transformer inputs
        and the packed target (noise - x0)."""
        t = self.cfg.train
        bsz = s.mean.shape[0]
        eps = torch.randn(s.mean.shape, generator=g).to(self.device)
        x0 = (s.mean + s.std * eps - self.shift) * self.scale
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        sigma = sample_sigmas(bsz, t.timestep_sampling, logit_mean=t.logit_mean,
                              logit_std=t.logit_std, mode_scale=t.mode_scale,
                              generator=g).to(self.device)
        h, w = x0.shape[-2:]
        return {
            "hidden_states": pack_latents(noisy_latents(x0, noise, sigma)),
            "timestep": sigma,
            "guidance": (torch.full((bsz,), t.guidance, device=self.device)
                         if self.guidance_embeds else None),
            "pooled_projections": s.pooled,
            "encoder_hidden_states": s.t5,
            "txt_ids": text_ids(s.t5.shape[1], self.device),
            "img_ids": latent_image_ids(h, w, self.device),
            "target": pack_latents(flow_target(x0, noise)),
        }

    def loss_on(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {k: v for k, v in inputs.items() if k != "target"}
        pred = self.transformer(**kwargs, return_dict=False)[0]
        # packing is a permutation, so the loss on packed tensors equals the unpacked one
        return flow_matching_loss(pred, inputs["target"])

    # ---------------------------------------------------------------- loop
    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics."""
        cfg, acc = self.cfg, self.accelerator
        accum = cfg.train.grad_accum
        losses, sigmas = [], []
        for k in range(accum):
            sample, g = self.micro_batch(self.step * accum + k)
            inputs = self.model_inputs(sample, g)
            sync = k == accum - 1
            # across GPUs, gradients are all-reduced only on the last micro-batch
            ctx = acc.no_sync(self.transformer) if not sync else contextlib.nullcontext()
            with ctx:
                loss = self.loss_on(inputs)
                acc.backward(loss / accum)
            losses.append(loss.detach())
            sigmas.append(inputs["timestep"].detach().float().mean())
        grad_norm = float("nan")
        if cfg.optim.max_grad_norm > 0:
            grad_norm = float(acc.clip_grad_norm_(self.params, cfg.optim.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss = acc.reduce(torch.stack(losses).mean(), reduction="mean")
        return {"loss": float(loss), "lr": float(self.scheduler.get_last_lr()[0]),
                "grad_norm": grad_norm, "sigma_mean": float(torch.stack(sigmas).mean())}

    def checkpoint_state(self) -> dict[str, Any]:
        from .flux_model import lora_state
        micro = self.step * self.cfg.train.grad_accum
        seen = micro * self.cfg.train.batch_size * self.accelerator.num_processes
        return {
            "step": self.step,
            "lora": lora_state(self.accelerator.unwrap_model(self.transformer)),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "data": {"micro_step": micro, "samples_seen": seen,
                     "epoch": seen // max(1, len(self.items))},
            "resume_digest": resume_digest(self.cfg),
            "config_digest": config_digest(self.cfg),
            "config": config_to_dict(self.cfg),
        }

    def save_checkpoint(self) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            path = self.checkpoints.save(self.step, self.checkpoint_state())
        acc.wait_for_everyone()
        return path

    def save_lora(self) -> Path:
        from ..nodes.lora import save_flux_lora
        return save_flux_lora(self.accelerator.unwrap_model(self.transformer),
                              self.output_dir / self.cfg.lora_name,
                              training_config=config_to_dict(self.cfg),
                              extra_metadata={"science_t2i.stage": "sft",
                                              "science_t2i.steps": str(self.step)})

    def save_samples(self) -> list[Path]:
        """Images of the fixed sample prompts with the current LoRA (loads the VAE briefly)."""
        from PIL import Image

        from ..nodes.files import write_bytes_atomic
        from .flux_model import FluxEncoders
        from .flux_sampler import FluxConditioning, decode_latents, sample_plain
        cfg = self.cfg
        if not cfg.sample.prompts or not self.accelerator.is_main_process:
            return []
        model = self.accelerator.unwrap_model(self.transformer)
        if self.cache is not None:
            emb = [self.cache.get(self.sample_keys[p], ("t5", "pooled"))
                   for p in cfg.sample.prompts]
            seq = torch.stack([e["t5"] for e in emb]).float().to(self.device)
            pooled = torch.stack([e["pooled"] for e in emb]).float().to(self.device)
        else:
            seq, pooled = self.encoders.encode_prompts(list(cfg.sample.prompts))
        cond = FluxConditioning(seq, pooled, text_ids(seq.shape[1], self.device))
        g = torch.Generator().manual_seed(cfg.sample.seed)
        res = cfg.data.resolution
        was_training = model.training
        model.eval()
        with self.accelerator.autocast():
            latents = sample_plain(model, cond, height=res, width=res, num_steps=cfg.sample.steps,
                                   churn=0.0, guidance=cfg.train.guidance, generator=g,
                                   vae_scale_factor=self.vae_scale)
        model.train(was_training)
        vae_holder = self.encoders if self.cache is None else FluxEncoders(
            self.model_dir, self.device, torch.float32)
        images = decode_latents(vae_holder.vae, latents, res // self.vae_scale,
                                res // self.vae_scale)
        if vae_holder is not self.encoders:
            vae_holder.release()
        out = []
        import io
        for i, img in enumerate(images):
            pil = Image.fromarray((img.numpy() * 255).round().astype("uint8"))
            buf = io.BytesIO()
            pil.save(buf, format="PNG")
            path = self.output_dir / "samples" / f"step{self.step:07d}_{i:02d}.png"
            write_bytes_atomic(path, buf.getvalue())
            out.append(path)
        return out

    def run(self) -> Path:
        """Train to ``train.max_steps``; returns the path of the final LoRA file."""
        from ..nodes import _comfy
        cfg, acc = self.cfg, self.accelerator
        main = acc.is_main_process
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output_dir / "config.yaml")
        bar = None
        if main and cfg.log.progress and os.environ.get("SCIENCE_T2I_NO_PROGRESS") != "1":
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc="sft", unit="step")
        t_last, steps_since = time.perf_counter(), 0
        while self.step < cfg.train.max_steps:
            _comfy.check_interrupt()
            metrics = self.train_step()
            if not math.isfinite(metrics["loss"]):
                raise ScienceT2IError(f"loss became {metrics['loss']} at step {self.step}; "
                                      "lower optim.lr or keep optim.max_grad_norm > 0.")
            steps_since += 1
            if main and self.step % cfg.log.every == 0:
                now = time.perf_counter()
                metrics["it_s"] = steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                self.run_log.log(self.step, **metrics)
                if bar is not None:
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                    it_s=f"{metrics['it_s']:.2f}")
            if bar is not None:
                bar.update(1)
            if main and cfg.log.plot_every and self.step % cfg.log.plot_every == 0:
                self.run_log.plot(["loss", "lr"], self.output_dir / "loss.png")
            if cfg.sample.every and self.step % cfg.sample.every == 0:
                self.save_samples()
            if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0
                    and self.step < cfg.train.max_steps):
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        self.save_checkpoint()
        lora_path = self.output_dir / cfg.lora_name
        if main:
            lora_path = self.save_lora()
            self.run_log.plot(["loss", "lr"], self.output_dir / "loss.png")
            self.save_samples()
        acc.wait_for_everyone()
        return lora_path


def train_sft(cfg: SFTConfig, resume: bool = False) -> Path:
    """Set up and run stage-1 SFT; returns the final LoRA path."""
    return SFTTrainer(cfg, resume=resume).setup().run()
