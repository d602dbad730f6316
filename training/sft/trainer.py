"""Stage 1 of Science-T2I: rectified-flow LoRA fine-tuning (SFT) of FLUX.

Each sample pairs a random implicit prompt of a record with a random explicit image of the same
record, as the paper does. VAE latents and text embeddings are cached on disk first
(``latent_cache``), so the loop only holds the transformer. The loop is deterministic given the
seed: every random draw of a sample comes from a generator seeded by (seed, sample index), so
a resumed run continues exactly as if it had never stopped, and N processes train on what one
process with N times the accumulation would.

Run it with ``science-t2i sft --config FILE [key=value ...] [--resume]``; several GPUs with
``accelerate launch --multi_gpu --num_processes N -m science_t2i.training.cli sft ...``.
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...nodes.errors import ScienceT2IError
from ..core.accelerator import WEIGHT_DTYPES
from ..core.seeds import generator_for
from ..core.trainer import run_scope
from ..flux.flow_matching import (discrete_levels, flow_matching_loss, flow_target, noisy_latents,
                                  sample_discrete, sample_sigmas, text_ids)
from ..flux.lora_trainer import LoraTrainer
from ..flux.sampler import latent_image_ids, pack_latents
from .config import SFTConfig

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One micro-batch on the device: cached VAE posterior and text embeddings, and one
    generator per sample for its posterior draw, noise and noise level."""
    mean: torch.Tensor      # [B, C, h, w]
    std: torch.Tensor
    t5: torch.Tensor        # [B, L, D]
    pooled: torch.Tensor    # [B, P]
    generators: list[torch.Generator] = field(default_factory=list)


# ----------------------------------------------------------------------------- trainer

class SFTTrainer(LoraTrainer):
    """Builds everything from an :class:`SFTConfig`; ``run()`` trains to ``train.max_steps``.

    Sample ``i`` of the run (optimizer step t, micro-batch k, process r, position j:
    i = ((t * grad_accum + k) * processes + r) * batch_size + j) draws its record, prompt,
    image, posterior sample, noise and noise level from its own generator seeded by
    (seed, i), so an optimizer step trains on the same samples whatever the number of
    processes, and a resumed run continues exactly.
    """

    name = "sft"
    stage = "sft"
    memory_plan = "sft"
    may_change_on_resume = ("output_dir", "lora_name", "train.max_steps", "train.epochs",
                            "checkpoint", "log",
                            "sample", "cache.enabled", "cache.dir", "cache.batch_size")

    def __init__(self, cfg: SFTConfig, resume: bool = False):
        super().__init__(cfg, resume)
        self._perms: dict[int, torch.Tensor] = {}

    # ---------------------------------------------------------------- setup
    def setup(self) -> "SFTTrainer":
        from ..core.datasets import load_records
        from ..core.preflight import check_output_dir
        from ..flux.latent_cache import LatentCache, build_cache
        from ..flux.model import FluxEncoders, vae_scale_factor

        cfg = self.cfg
        self.check_memory(cfg.data.resolution)
        if not cfg.data.path:
            raise ScienceT2IError("data.path is not set; point it at a Science-T2I-format "
                                  "dataset (save_to_disk folder, parquet or JSON/JSONL).")
        if cfg.cache.enabled and cfg.cache.dir:
            check_output_dir(cfg.cache.dir, "cache.dir")
        self.start()
        acc = self.accelerator
        self.model_dir = self.resolve_model()
        self.vae_scale = vae_scale_factor(self.model_dir)
        if cfg.data.resolution % (2 * self.vae_scale):
            raise ScienceT2IError(f"data.resolution {cfg.data.resolution} must be a multiple "
                                  f"of {2 * self.vae_scale} (VAE downsampling x 2x2 packing).")
        cache_dtype = (WEIGHT_DTYPES[cfg.cache.dtype] if cfg.cache.dtype != "auto" else
                       (torch.bfloat16 if self.device.type == "cuda" else torch.float32))

        records = load_records(cfg.data.path, cfg.data.split,
                               require=("implicit_prompt", "explicit_image"))
        self.encoders = FluxEncoders(self.model_dir, self.device, self.weight_dtype,
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
                    upscale_small=cfg.data.upscale_small, resample=cfg.data.resample,
                    crop=cfg.data.crop, multiple=2 * self.vae_scale,
                    batch_size=cfg.cache.batch_size,
                    cache_dtype=cache_dtype, extra_prompts=cfg.sample.prompts,
                    progress=cfg.log.progress and acc.is_local_main_process)
            self.encoders.release()
        else:
            self.cache = None
            self.items = records
            self.sample_keys = {}
            for rec in records:  # fail now, not mid-run, on a bad image
                if not rec.implicit_prompts:
                    raise ScienceT2IError(f"record {rec.index} has no implicit prompt.")
                for ref in rec.explicit_images:
                    self._load_image(ref)

        self.total_steps = self._total_steps(len(self.items))
        self.levels = _discrete_levels(self.model_dir)
        transformer = self.load_base(self.model_dir)
        self.guidance_embeds = bool(getattr(transformer.config, "guidance_embeds", False))
        self.setup_lora(transformer, self.total_steps)
        self.restore()
        return self

    def _total_steps(self, records: int) -> int:
        """train.max_steps, or the optimizer steps of train.epochs passes over the records
        (the last step may reach into the next pass, where the reference's is smaller)."""
        t = self.cfg.train
        if t.epochs is None:
            return t.max_steps
        per_step = t.batch_size * t.grad_accum * self.num_processes
        return max(1, math.ceil(t.epochs * records / per_step))

    def _load_image(self, ref: Any) -> torch.Tensor:
        from ..flux.latent_cache import load_image_tensor
        d = self.cfg.data
        return load_image_tensor(ref, d.resolution, d.upscale_small, d.resample, d.crop,
                                 2 * self.vae_scale)

    @property
    def transformer(self) -> torch.nn.Module:
        """The trained transformer as the processes run it (DDP-wrapped with several)."""
        return self.model

    # ---------------------------------------------------------------- data
    def _record_at(self, global_index: int) -> int:
        n = len(self.items)
        epoch, pos = divmod(global_index, n)
        perm = self._perms.get(epoch)
        if perm is None:
            g = generator_for(self.cfg.train.seed, 7, epoch)
            perm = torch.randperm(n, generator=g)
            self._perms = {epoch: perm}  # only the current epoch is needed
        return int(perm[pos])

    def micro_batch(self, micro_step: int) -> Sample:
        """This process's micro-batch ``micro_step``, each sample with its own generator
        (see ``micro_batches`` for images of different sizes)."""
        groups = self.micro_batches(micro_step)
        if len(groups) > 1:
            raise ScienceT2IError("this micro-batch mixes image sizes; use micro_batches().")
        return groups[0][0]

    def micro_batches(self, micro_step: int) -> list[tuple[Sample, int]]:
        """This process's micro-batch ``micro_step`` as (samples of one image size, count)
        groups: one group unless uncropped images differ in size."""
        cfg = self.cfg
        b = cfg.train.batch_size
        first = (micro_step * self.num_processes + self.rank) * b
        picks, gens = [], []
        for i in range(first, first + b):
            g = generator_for(cfg.train.seed, 23, i)
            item = self.items[self._record_at(i)]
            prompts = item.prompt_keys if self.cache is not None else item.implicit_prompts
            images = item.image_keys if self.cache is not None else item.explicit_images
            p = int(torch.randint(len(prompts), (1,), generator=g))
            k = int(torch.randint(len(images), (1,), generator=g))
            picks.append((prompts[p], images[k]))
            gens.append(g)
        groups = []
        for idx in self._by_size(picks):
            sample = self._fetch([picks[i] for i in idx])
            sample.generators = [gens[i] for i in idx]
            groups.append((sample, len(idx)))
        return groups

    def _by_size(self, picks: list[tuple[Any, Any]]) -> list[list[int]]:
        if self.cfg.data.crop:
            return [list(range(len(picks)))]
        if self.cache is not None:
            sizes = [tuple(self.cache.shape(i, "mean")) for _, i in picks]
        else:
            sizes = [tuple(self._load_image(i).shape) for _, i in picks]
        return [[i for i, s in enumerate(sizes) if s == size] for size in dict.fromkeys(sizes)]

    def _fetch(self, picks: list[tuple[Any, Any]]) -> Sample:
        dev = self.device
        if self.cache is not None:
            txt = [self.cache.get(p, ("t5", "pooled")) for p, _ in picks]
            img = [self.cache.get(i, ("mean", "std")) for _, i in picks]
            return Sample(torch.stack([e["mean"] for e in img]).float().to(dev),
                          torch.stack([e["std"] for e in img]).float().to(dev),
                          torch.stack([e["t5"] for e in txt]).float().to(dev),
                          torch.stack([e["pooled"] for e in txt]).float().to(dev))
        seq, pooled = self.encoders.encode_prompts([p for p, _ in picks])
        pixels = torch.stack([self._load_image(ref) for _, ref in picks])
        mean, std = self.encoders.encode_images(pixels)
        return Sample(mean.float(), std.float(), seq.float(), pooled.float())

    # ---------------------------------------------------------------- maths
    def model_inputs(self, s: Sample) -> dict[str, torch.Tensor]:
        """Draw x0 from the VAE posterior, noise and sigma (each sample from its own
        generator); build the packed transformer inputs and the packed target (noise - x0)."""
        from diffusers.utils.torch_utils import randn_tensor
        t, gens = self.cfg.train, s.generators
        bsz = s.mean.shape[0]
        eps = randn_tensor(s.mean.shape, generator=gens, device=self.device)
        x0 = (s.mean + s.std * eps - self.shift) * self.scale
        noise = randn_tensor(x0.shape, generator=gens, device=self.device)
        if t.timestep_sampling == "discrete":
            draws = [sample_discrete(1, self.levels, generator=g) for g in gens]
            sigma = torch.cat([d[0] for d in draws]).to(self.device)
            timestep = torch.cat([d[1] for d in draws]).to(self.device)
        else:
            sigma = torch.cat([sample_sigmas(1, t.timestep_sampling, logit_mean=t.logit_mean,
                                             logit_std=t.logit_std, mode_scale=t.mode_scale,
                                             generator=g) for g in gens]).to(self.device)
            timestep = sigma
        h, w = x0.shape[-2:]
        return {
            "hidden_states": pack_latents(noisy_latents(x0, noise, sigma)),
            "timestep": timestep,
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
        pred = self.model(**kwargs, return_dict=False)[0]
        # packing is a permutation, so the loss on packed tensors equals the unpacked one
        return flow_matching_loss(pred, inputs["target"])

    # ---------------------------------------------------------------- loop
    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches of every process: gradients
        accumulate locally and are averaged over micro-batches and processes."""
        accum, b = self.cfg.train.grad_accum, self.cfg.train.batch_size
        losses, sigmas = [], []
        for k in range(accum):
            groups = self.micro_batches(self.step * accum + k)
            loss_sum = sigma_sum = 0.0
            for g, (sample, n) in enumerate(groups):
                inputs = self.model_inputs(sample)
                # a group's share of the micro-batch's mean loss
                with self.accumulating(last=k == accum - 1 and g == len(groups) - 1):
                    loss = self.loss_on(inputs)
                    self.accelerator.backward(loss * (n / b) / accum)
                loss_sum = loss_sum + loss.detach() * (n / b)
                sigma_sum = sigma_sum + inputs["timestep"].detach().float().sum() / b
            losses.append(loss_sum)
            sigmas.append(sigma_sum)
        out = self.optimizer_step()
        metrics = self.mean_across({"loss": torch.stack(losses).mean(),
                                    "sigma_mean": torch.stack(sigmas).mean()})
        return self.step_metrics(out, **metrics)

    def trainer_state(self) -> dict[str, Any]:
        micro = self.step * self.cfg.train.grad_accum
        seen = micro * self.cfg.train.batch_size * self.num_processes
        return {**super().trainer_state(),
                "data": {"micro_step": micro, "samples_seen": seen,
                         "epoch": seen // max(1, len(self.items))}}

    def after_step(self) -> None:
        if self.cfg.sample.every and self.step % self.cfg.sample.every == 0:
            self.save_samples()

    def save_samples(self) -> list[Path]:
        """Images of the fixed sample prompts with the current LoRA (loads the VAE briefly)."""
        from PIL import Image

        from ...nodes.core import write_bytes_atomic
        from ..flux.model import FluxEncoders
        from ..flux.sampler import FluxConditioning, decode_latents, sample_plain
        cfg = self.cfg
        if not cfg.sample.prompts or not self.is_main:
            return []
        model = self.unwrapped
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
        self.begin_run()
        self.run_steps(self.total_steps)
        lora_path = self.output_dir / self.cfg.lora_name
        if self.is_main:
            self.write_lora(lora_path)
            self.plot()
            self.save_samples()
        self.end_run()
        return lora_path


def _discrete_levels(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's scheduler training table (``flow_matching.discrete_levels``)."""
    from ..flux.model import scheduler_config
    sc = scheduler_config(model_dir)
    return discrete_levels(int(sc.get("num_train_timesteps", 1000)), float(sc.get("shift", 1.0)),
                           bool(sc.get("use_dynamic_shifting", True)))


def train_sft(cfg: SFTConfig, resume: bool = False) -> Path:
    """Set up and run stage-1 SFT; returns the final LoRA path."""
    with run_scope(cfg):
        return SFTTrainer(cfg, resume=resume).setup().run()
