"""Stage 2 of Science-T2I: masked online preference fine-tuning of FLUX.

Each round: sample K images for each of a few prompts with the current policy (in-process or
on ComfyUI servers), score them (SciScore), mask the subject (GroundingDINO), pair the best and
the worst image of each prompt, and train the LoRA on the pairs:

- "oft" (the paper): for every recorded timestep, the clamped log-prob ratio of the policy
  against the reference, masked in latent space, in a DPO-style logistic loss;
- "flow-dpo": Diffusion-DPO for rectified flow on the final images.

The reference policy is the same transformer with the trained adapter disabled. When training
starts from an SFT LoRA, that LoRA is merged into the (frozen) transformer weights in place
first, so "adapter disabled" is exactly the SFT model; no copy of the transformer is made.
The exported LoRA then stacks the SFT LoRA and the stage-2 LoRA (ranks concatenated), so it
applies to the base FLUX model like any other LoRA.

Run it with ``science-t2i dpo --config FILE [key=value ...] [--comfy URL ...] [--resume]``.
Device, mixed precision and backward go through the SFT trainer's accelerate setup; stage 2
runs in one process (``accelerate launch`` with more is refused: spread rollouts over ComfyUI
servers instead), and ``train.grad_accum`` micro-batches of pairs make an optimizer step.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch

from ..nodes.errors import ScienceT2IError
from .checkpoints import CheckpointManager, capture_rng_state, restore_rng_state
from .config import (config_digest, config_to_dict, require_at_least, save_config,
                     settings_digest)
from .flux_math import sample_sigmas
from .flux_sampler import (Trajectory, latent_image_ids, pack_mask, predict_velocity,
                           transition_log_prob)
from .preference_losses import Pair, flow_dpo_loss, flow_matching_inputs, oft_loss, select_pairs
from .rollouts import RolloutBatch, RolloutPrompt
from .run_log import RunLog
from .sft import (LoraSection, OptimSection, _DTYPES, _seed_for, make_accelerator,
                  prepare_lora_training)

log = logging.getLogger(__name__)

DEFAULT_WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "rollout.json"


# ----------------------------------------------------------------------------- configuration

@dataclass
class DPOModelSection:
    path: str = "black-forest-labs/FLUX.1-dev"   # a diffusers FLUX folder (or a Hub id)
    sft_lora: str = ""        # stage-1 LoRA to start from; it becomes the reference policy


@dataclass
class RolloutSection:
    prompts: str = ""         # JSON list of {"prompt", "object"} (science_t2i_rollout_prompts.json)
    source: Literal["in-process", "comfy"] = "in-process"
    prompts_per_round: int = 8
    samples_per_prompt: int = 2
    steps: int = 30
    churn: float = 0.1
    guidance: float = 0.0
    resolution: int = 512
    batch_size: int = 8       # images sampled per forward pass
    max_sequence_length: int = 512


@dataclass
class RewardSection:
    kind: Literal["sciscore", "brightness"] = "sciscore"   # brightness: synthetic, for smoke runs
    model: str = "Jialuo21/SciScore"
    batch_size: int = 16


@dataclass
class MaskSection:
    enabled: bool = True      # the paper: without the mask, training collapses
    model: str = "IDEA-Research/grounding-dino-tiny"
    box_threshold: float = 0.35
    text_threshold: float = 0.25


@dataclass
class ObjectiveSection:
    kind: Literal["oft", "flow-dpo"] = "oft"
    eps: float = 0.1          # oft: ratio clamp
    beta: float = 10.0        # oft
    flow_dpo_beta: float = 100.0
    timestep_fraction: float = 1.0   # oft: share of the recorded timesteps trained (paper: all)
    timestep_sampling: Literal["uniform", "logit_normal", "mode"] = "uniform"   # flow-dpo


@dataclass
class DPOTrainSection:
    rounds: int = 100
    inner_epochs: int = 1
    pairs_per_step: int = 1   # pairs per micro-batch (oft accumulates over all timesteps)
    grad_accum: int = 1       # micro-batches per optimizer step
    seed: int = 0
    mixed_precision: Literal["bf16", "fp16", "fp32"] = "bf16"   # fp32 on CPU
    gradient_checkpointing: bool = True


@dataclass
class CheckpointSection:
    every: int = 10           # optimizer steps; 0 = end of each round only
    keep_last: int = 3


@dataclass
class LogSection:
    plot_every: int = 1       # rounds
    progress: bool = True


@dataclass
class ComfySection:
    servers: list[str] = field(default_factory=list)   # http://HOST:PORT[=LORA_DIR]
    lora_dir: str = ""        # folder every server's LoRA loader reads (when not per server)
    workflow: str = ""        # default: workflows/api/rollout.json
    poll_interval: float = 1.0
    timeout: float = 1800.0


@dataclass
class DPOConfig:
    output_dir: str = "runs/dpo"
    lora_name: str = "science_t2i_oft.safetensors"
    model: DPOModelSection = field(default_factory=DPOModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=3e-4))
    rollout: RolloutSection = field(default_factory=RolloutSection)
    reward: RewardSection = field(default_factory=RewardSection)
    mask: MaskSection = field(default_factory=MaskSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    train: DPOTrainSection = field(default_factory=DPOTrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    comfy: ComfySection = field(default_factory=ComfySection)

    def __post_init__(self) -> None:
        r, t = self.rollout, self.train
        require_at_least((("rollout.prompts_per_round", r.prompts_per_round, 1),
                          ("rollout.samples_per_prompt", r.samples_per_prompt, 2),
                          ("rollout.steps", r.steps, 1),
                          ("rollout.batch_size", r.batch_size, 1),
                          ("train.rounds", t.rounds, 1),
                          ("train.inner_epochs", t.inner_epochs, 1),
                          ("train.pairs_per_step", t.pairs_per_step, 1),
                          ("train.grad_accum", t.grad_accum, 1)))
        if self.objective.kind == "oft" and r.source == "comfy":
            raise ScienceT2IError(
                "objective.kind=oft needs the sampler's per-step log-probabilities, which only "
                "in-process rollouts record; use objective.kind=flow-dpo with ComfyUI servers.")
        if self.objective.kind == "oft" and r.churn <= 0:
            raise ScienceT2IError("objective.kind=oft needs a stochastic sampler: rollout.churn "
                                  "> 0 (the paper uses 0.1).")
        if not 0 < self.objective.timestep_fraction <= 1:
            raise ScienceT2IError("objective.timestep_fraction must be in (0, 1].")
        if self.optim.lr <= 0:
            raise ScienceT2IError(f"optim.lr must be > 0; got {self.optim.lr}.")


def resume_digest(cfg: DPOConfig) -> str:
    """Settings a resumed run must share with the original (rounds, checkpoint, log may change)."""
    d = config_to_dict(cfg)
    keep = {k: d[k] for k in ("model", "lora", "optim", "rollout", "reward", "mask", "objective")}
    keep["train"] = {k: v for k, v in d["train"].items() if k != "rounds"}
    return settings_digest(keep)


# ----------------------------------------------------------------------------- reference policy

def lora_layers(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's PEFT adapter layers (found once: walking every module per step costs)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapter_disabled(transformer: torch.nn.Module,
                     layers: list[torch.nn.Module] | None = None) -> Iterator[None]:
    """The reference policy: the same module with its LoRA adapters switched off (no copy).
    ``layers`` (from :func:`lora_layers`) saves searching the module tree each call."""
    layers = lora_layers(transformer) if layers is None else layers
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def merge_lora_into_weights(transformer: torch.nn.Module, lora: Any) -> int:
    """Add a LoRA file's weight changes to the transformer's linear weights in place (before
    any adapter is attached); returns the number of layers changed."""
    changed = 0
    for module in lora.modules:
        try:
            layer = transformer.get_submodule(module.removeprefix("transformer."))
        except AttributeError:
            raise ScienceT2IError(f"the SFT LoRA has layer {module!r}, which this FLUX "
                                  "transformer does not; was it trained on another model?")
        with torch.no_grad():
            layer.weight += lora.delta(module).to(layer.weight.device, layer.weight.dtype)
        changed += 1
    return changed


def stack_loras(first: Any, second: Any) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """One LoRA equal to the sum of two: ranks concatenated, each scale folded into B.
    Keys as in ``LoraFile.tensors`` (``transformer.<module>.lora_A.weight``)."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module in dict.fromkeys(list(first.modules) + list(second.modules)):
        As, Bs = [], []
        for lora in (first, second):
            if module in lora.ranks:
                A = lora.tensors[f"{module}.lora_A.weight"].float()
                B = lora.tensors[f"{module}.lora_B.weight"].float()
                As.append(A)
                Bs.append(B * (lora.alphas[module] / A.shape[0]))
        tensors[f"{module}.lora_A.weight"] = torch.cat(As, 0).contiguous()
        tensors[f"{module}.lora_B.weight"] = torch.cat(Bs, 1).contiguous()
        ranks[module] = tensors[f"{module}.lora_A.weight"].shape[0]
    return tensors, ranks


# ----------------------------------------------------------------------------- trainer

class DPOTrainer:
    """Builds everything from a :class:`DPOConfig`; ``run()`` trains ``train.rounds`` rounds.

    ``reward_fn`` / ``mask_fn`` replace the configured SciScore / GroundingDINO (tests, custom
    rewards); ``comfy_servers`` adds servers to ``comfy.servers``.
    """

    def __init__(self, cfg: DPOConfig, resume: bool = False,
                 comfy_servers: list[str] | None = None, reward_fn: Callable | None = None,
                 mask_fn: Callable | None = None):
        self.cfg = cfg
        self.resume = resume
        self.comfy_servers = list(cfg.comfy.servers) + list(comfy_servers or [])
        self.reward_fn = reward_fn
        self.mask_fn = mask_fn
        self.output_dir = Path(cfg.output_dir).expanduser()
        self.step = 0
        self.round = 0
        self.position = 0           # next micro-batch of the current round
        self.buffer: RolloutBatch | None = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> "DPOTrainer":
        from .flux_model import (FluxEncoders, load_transformer,
                                 resolve_flux_dir, vae_scale_factor)
        from .rollouts import load_rollout_prompts

        cfg = self.cfg
        if not cfg.rollout.prompts:
            raise ScienceT2IError("rollout.prompts is not set; point it at a JSON list of "
                                  "{\"prompt\": ..., \"object\": ...} (e.g. the Science-T2I "
                                  "rollout prompt set).")
        self.prompts = load_rollout_prompts(cfg.rollout.prompts)
        # device and mixed precision as in the SFT trainer; one process: the rollouts of a
        # round and the training on them share the one policy, so N processes would each
        # sample and train on their own rounds without exchanging anything but gradients
        acc, precision = make_accelerator(cfg.train.mixed_precision)
        self.accelerator = acc
        if acc.num_processes > 1:
            raise ScienceT2IError(
                f"stage 2 runs in a single process; it was started with {acc.num_processes} "
                "(accelerate launch / torchrun). Start it with `science-t2i dpo` on one GPU and "
                "spread the rollouts over machines with ComfyUI servers (--comfy URL ...).")
        self.device = acc.device
        self.model_dir = resolve_flux_dir(cfg.model.path)
        self.vae_scale = vae_scale_factor(self.model_dir)
        if cfg.rollout.resolution % (2 * self.vae_scale):
            raise ScienceT2IError(f"rollout.resolution {cfg.rollout.resolution} must be a "
                                  f"multiple of {2 * self.vae_scale}.")
        weight_dtype = _DTYPES.get(precision, torch.float32) if precision != "no" else torch.float32
        self.encoders = FluxEncoders(self.model_dir, self.device, weight_dtype,
                                     cfg.rollout.max_sequence_length)
        transformer = load_transformer(self.model_dir, weight_dtype, self.device)
        self.sft_lora = None
        if cfg.model.sft_lora:
            from ..nodes.lora import read_lora
            self.sft_lora = read_lora(cfg.model.sft_lora)
            n = merge_lora_into_weights(transformer, self.sft_lora)
            log.info("merged the SFT LoRA (%d layers) into the weights: it is the reference", n)
        torch.manual_seed(_seed_for(cfg.train.seed, 1))  # the LoRA's initial weights
        (self.params, self.transformer, self.optimizer,
         self.scheduler) = prepare_lora_training(acc, transformer, cfg, self.device)
        self.model = acc.unwrap_model(self.transformer)
        self.lora_layers = lora_layers(self.model)
        self._img_ids: dict[tuple[int, int], torch.Tensor] = {}
        self.scheduler_config = dict(_scheduler_config(self.model_dir))
        self.source = self._make_source()
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints",
                                             cfg.checkpoint.keep_last)
        self.run_log = RunLog(self.output_dir)
        if self.resume:
            self._resume()
        return self

    def _reward(self) -> Callable:
        from .rollouts import brightness_reward, sciscore_reward
        if self.reward_fn is not None:
            return self.reward_fn
        if self.cfg.reward.kind == "brightness":
            return brightness_reward
        return sciscore_reward(self.cfg.reward.model, self.device, self.cfg.reward.batch_size)

    def _masks(self) -> Callable | None:
        from .rollouts import gdino_latent_masks
        m = self.cfg.mask
        if not m.enabled:
            return None
        if self.mask_fn is not None:
            return self.mask_fn
        return gdino_latent_masks(m.model, box_threshold=m.box_threshold,
                                  text_threshold=m.text_threshold, device=self.device)

    def _make_source(self) -> Any:
        from .rollouts import ComfyRollouts, InProcessRollouts
        cfg, r = self.cfg, self.cfg.rollout
        if r.source == "in-process":
            return InProcessRollouts(
                self.model, self.encoders, resolution=r.resolution, num_steps=r.steps,
                churn=r.churn, guidance=r.guidance, vae_scale_factor=self.vae_scale,
                scheduler_config=self.scheduler_config, reward_fn=self._reward(),
                mask_fn=self._masks(), batch_size=r.batch_size, device=self.device,
                autocast=self.accelerator.autocast)
        from .comfy_client import ComfyRolloutClient, ComfyServer
        if not self.comfy_servers:
            raise ScienceT2IError("rollout.source=comfy needs servers: pass --comfy "
                                  "http://HOST:PORT[=LORA_DIR] or set comfy.servers.")
        servers = [ComfyServer.parse(s, cfg.comfy.lora_dir or None) for s in self.comfy_servers]
        client = ComfyRolloutClient(servers, cfg.comfy.workflow or DEFAULT_WORKFLOW,
                                    poll_interval=cfg.comfy.poll_interval,
                                    timeout=cfg.comfy.timeout,
                                    size=(r.resolution, r.resolution))
        reward = self.reward_fn if self.reward_fn is not None else (
            self._reward() if cfg.reward.kind == "brightness" else None)
        return ComfyRollouts(client, self.encoders, resolution=r.resolution,
                             vae_scale_factor=self.vae_scale, reward_fn=reward,
                             mask_fn=self.mask_fn, use_masks=cfg.mask.enabled,
                             lora_provider=self._publish_current_lora, device=self.device)

    def _publish_current_lora(self) -> tuple[Path, int]:
        path = self.save_lora(self.output_dir / "rollout_lora" / "current.safetensors")
        return path, self.round

    def _resume(self) -> None:
        from .flux_model import load_lora_state
        path, state = self.checkpoints.load_for_resume(
            resume_digest(self.cfg), "train.rounds, checkpoint.* and log.*")
        load_lora_state(self.model, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.step, self.round = int(state["step"]), int(state["round"])
        self.position = int(state["position"])
        self.buffer = RolloutBatch.from_state(state["buffer"]) if "buffer" in state else None
        self.run_log.truncate_after(self.step)
        if self.buffer is None:  # the round's rollouts are redone: drop their first logging
            self._drop_round_log(self.step)
        log.info("resumed from %s at step %d (round %d)", path, self.step, self.round)

    def _drop_round_log(self, step: int) -> None:
        from ..nodes.files import write_bytes_atomic
        kept = [r for r in self.run_log.records()
                if not (int(r.get("step", -1)) == step and "reward_mean" in r)]
        write_bytes_atomic(self.run_log.path,
                           "".join(json.dumps(r) + "\n" for r in kept).encode())

    # ---------------------------------------------------------------- rounds
    def round_prompts(self, round_index: int) -> list[RolloutPrompt]:
        """Prompts of a round: successive slices of a seeded permutation (reshuffled each pass)."""
        n, per = len(self.prompts), self.cfg.rollout.prompts_per_round
        out = []
        for j in range(per):
            flat = round_index * per + j
            epoch, pos = divmod(flat, n)
            g = torch.Generator().manual_seed(_seed_for(self.cfg.train.seed, 11, epoch))
            out.append(self.prompts[int(torch.randperm(n, generator=g)[pos])])
        return out

    def generate_round(self) -> RolloutBatch:
        seed = _seed_for(self.cfg.train.seed, 3, self.round) % (2 ** 31)
        return self.source.generate(self.round_prompts(self.round),
                                    self.cfg.rollout.samples_per_prompt, seed)

    def micro_batches(self, batch: RolloutBatch) -> list[list[Pair]]:
        pairs = select_pairs(batch.rewards)
        size, out = self.cfg.train.pairs_per_step, []
        for epoch in range(self.cfg.train.inner_epochs):
            g = torch.Generator().manual_seed(_seed_for(self.cfg.train.seed, 5, self.round, epoch))
            order = [pairs[i] for i in torch.randperm(len(pairs), generator=g).tolist()]
            out += [order[i:i + size] for i in range(0, len(order), size)]
        return out

    # ---------------------------------------------------------------- losses
    def _indices(self, batch: RolloutBatch, pairs: list[Pair]) -> tuple[list[int], list[int]]:
        k = batch.k
        return ([p.prompt_index * k + p.win for p in pairs],
                [p.prompt_index * k + p.lose for p in pairs])

    def _reference(self) -> contextlib.ExitStack:
        """Context of a reference forward: adapters off, no autograd bookkeeping at all."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(adapter_disabled(self.model, self.lora_layers))
        stack.enter_context(self.accelerator.autocast())
        return stack

    def oft_step(self, batch: RolloutBatch, pairs: list[Pair], micro: int = 0,
                 scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Backward of one micro-batch's oft loss (times ``scale``); metrics stay tensors."""
        cfg, dev = self.cfg, self.device
        win, lose = self._indices(batch, pairs)
        idx = win + lose
        b = len(pairs)
        t = batch.trajectory
        if t is None:
            raise ScienceT2IError("objective oft needs in-process rollouts with trajectories.")
        sel = Trajectory(t.latents[idx].to(dev), t.log_probs[idx], t.noise[idx], t.sigmas, t.stds,
                         t.latent_height, t.latent_width)
        cond = batch.conditioning(idx, dev)
        mask = batch.latent_masks[idx].to(dev) if batch.latent_masks is not None else None
        steps = list(range(t.num_steps))
        if cfg.objective.timestep_fraction < 1:
            g = torch.Generator().manual_seed(_seed_for(cfg.train.seed, 13, micro))
            keep = max(1, int(round(len(steps) * cfg.objective.timestep_fraction)))
            steps = sorted(torch.randperm(len(steps), generator=g)[:keep].tolist())
        losses, wins, clipped = [], [], []
        clip = math.log(1 + cfg.objective.eps)
        for j in steps:
            with self._reference():
                lp_ref = transition_log_prob(self.model, sel, j, cond, mask=mask,
                                             guidance=cfg.rollout.guidance)
            with self.accelerator.autocast():
                lp = transition_log_prob(self.model, sel, j, cond, mask=mask,
                                         guidance=cfg.rollout.guidance)
            loss = oft_loss(lp[:b], lp_ref[:b], lp[b:], lp_ref[b:], eps=cfg.objective.eps,
                            beta=cfg.objective.beta)
            self.accelerator.backward(loss * (scale / len(steps)))
            with torch.no_grad():
                ratio = (lp - lp_ref).float()
                wins.append((ratio[:b] > ratio[b:]).float().mean())
                clipped.append((ratio.abs() > clip).float().mean())
            losses.append(loss.detach())
        return {"loss": torch.stack(losses).mean(), "win_rate": torch.stack(wins).mean(),
                "clip_frac": torch.stack(clipped).mean()}

    def _image_ids(self, batch: RolloutBatch) -> torch.Tensor:
        key = (batch.latent_height, batch.latent_width)
        if key not in self._img_ids:
            self._img_ids[key] = latent_image_ids(*key, self.device)
        return self._img_ids[key]

    def flow_dpo_step(self, batch: RolloutBatch, pairs: list[Pair], micro: int = 0,
                      scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Backward of one micro-batch's Flow-DPO loss (times ``scale``): win and lose go through
        the reference and the policy as one batch each; metrics stay tensors (no sync)."""
        cfg, dev = self.cfg, self.device
        win, lose = self._indices(batch, pairs)
        b = len(pairs)
        g = torch.Generator().manual_seed(_seed_for(cfg.train.seed, 17, micro))
        x0 = batch.final_latents[win + lose].to(dev, torch.float32)
        noise = torch.randn(x0[:b].shape, generator=g).to(dev)      # shared by win and lose
        sigma = sample_sigmas(b, cfg.objective.timestep_sampling, generator=g).to(dev)  # shared
        sig2 = torch.cat([sigma, sigma])
        hidden, target = flow_matching_inputs(x0, torch.cat([noise, noise]), sig2)
        cond = batch.conditioning(win + lose, dev)
        img_ids = self._image_ids(batch)
        with self._reference():
            ref = predict_velocity(self.model, hidden, sig2, cond, img_ids, cfg.rollout.guidance)
        with self.accelerator.autocast():
            pred = predict_velocity(self.model, hidden, sig2, cond, img_ids,
                                    cfg.rollout.guidance)
        mw = ml = None
        if batch.latent_masks is not None:
            m = pack_mask(batch.latent_masks[win + lose], x0.shape[-1] // 4).to(dev)
            mw, ml = m[:b], m[b:]
        loss, stats = flow_dpo_loss(pred[:b], ref[:b], target[:b], pred[b:], ref[b:], target[b:],
                                    beta=cfg.objective.flow_dpo_beta, mask_win=mw, mask_lose=ml)
        self.accelerator.backward(loss * scale)
        return {"loss": loss.detach(), "win_rate": stats["implicit_acc"],
                "sigma_mean": sigma.mean()}

    def train_step(self, batch: RolloutBatch,
                   micro_batches: list[list[Pair]]) -> dict[str, float]:
        """One optimizer step over the given micro-batches (up to ``train.grad_accum``), the
        gradients averaged over them as in the SFT trainer."""
        step_fn = self.oft_step if self.cfg.objective.kind == "oft" else self.flow_dpo_step
        n = len(micro_batches)
        parts = []
        for k, pairs in enumerate(micro_batches):
            parts.append(step_fn(batch, pairs, micro=self.step * self.cfg.train.grad_accum + k,
                                 scale=1.0 / n))
        metrics = {key: torch.stack([p[key] for p in parts]).mean() for key in parts[0]}
        if self.cfg.optim.max_grad_norm > 0:
            metrics["grad_norm"] = self.accelerator.clip_grad_norm_(
                self.params, self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        # one device-to-host transfer for all the step's numbers
        names = list(metrics)
        values = torch.stack([metrics[k].detach().float().reshape(()).to(self.device)
                              for k in names]).tolist()
        out = dict(zip(names, values))
        out.setdefault("grad_norm", float("nan"))
        out.update(lr=float(self.scheduler.get_last_lr()[0]), round=self.round)
        return out

    # ---------------------------------------------------------------- state
    def checkpoint_state(self) -> dict[str, Any]:
        from .flux_model import lora_state
        state = {"step": self.step, "round": self.round, "position": self.position,
                 "lora": lora_state(self.model), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": capture_rng_state(),
                 "resume_digest": resume_digest(self.cfg), "config_digest": config_digest(self.cfg),
                 "config": config_to_dict(self.cfg)}
        if self.buffer is not None:
            state["buffer"] = self.buffer.to_state()
        return state

    def save_checkpoint(self) -> Path:
        return self.checkpoints.save(self.step, self.checkpoint_state())

    def save_lora(self, path: Path | None = None) -> Path:
        """The policy as one LoRA for the base model (SFT LoRA stacked in when there is one)."""
        from ..nodes.lora import save_flux_lora
        path = Path(path or self.output_dir / self.cfg.lora_name)
        meta = {"science_t2i.stage": "oft" if self.cfg.objective.kind == "oft" else "flow-dpo",
                "science_t2i.steps": str(self.step)}
        if self.sft_lora is None:
            return save_flux_lora(self.model, path, training_config=config_to_dict(self.cfg),
                                  extra_metadata=meta)
        from ..nodes.files import save_safetensors_atomic, safetensors_metadata
        from ..nodes.lora import DIFFUSERS_METADATA_KEY, read_lora
        delta_path = path.with_name(path.stem + ".delta.safetensors")
        save_flux_lora(self.model, delta_path, training_config=config_to_dict(self.cfg),
                       extra_metadata=meta)
        tensors, ranks = stack_loras(self.sft_lora, read_lora(delta_path))
        metadata = safetensors_metadata(delta_path)
        from collections import Counter
        rank = Counter(ranks.values()).most_common(1)[0][0]
        pattern = {f"^{m}": r for m, r in ranks.items() if r != rank}
        pattern = {k.replace("^transformer.", "^"): v for k, v in pattern.items()}
        adapter = {"r": rank, "lora_alpha": rank, "rank_pattern": pattern,
                   "alpha_pattern": dict(pattern),
                   "target_modules": sorted(m.removeprefix("transformer.") for m in ranks),
                   "use_rslora": False, "use_dora": False, "lora_bias": False, "bias": "none",
                   "lora_dropout": 0.0, "init_lora_weights": True, "peft_type": "LORA"}
        metadata[DIFFUSERS_METADATA_KEY] = json.dumps(
            {f"transformer.{k}": v for k, v in adapter.items()}, indent=2, sort_keys=True)
        metadata["science_t2i.stacked_on_sft_lora"] = str(self.sft_lora.path.name)
        save_safetensors_atomic(tensors, path, metadata=metadata)
        delta_path.unlink(missing_ok=True)
        return path

    # ---------------------------------------------------------------- loop
    def run(self) -> Path:
        """Train ``train.rounds`` rounds; returns the final LoRA path."""
        from ..nodes import _comfy
        cfg = self.cfg
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.output_dir / "config.yaml")
        progress = cfg.log.progress and os.environ.get("SCIENCE_T2I_NO_PROGRESS") != "1"
        while self.round < cfg.train.rounds:
            _comfy.check_interrupt()
            if self.buffer is None:
                t0 = time.perf_counter()
                self.buffer = self.generate_round()
                self.position = 0
                r = self.buffer.rewards
                pairs = select_pairs(r)
                self.run_log.log(self.step, round=self.round, reward_mean=float(r.mean()),
                                 reward_std=float(r.std()), reward_max=float(r.max()),
                                 reward_min=float(r.min()), pairs=len(pairs),
                                 reward_gap=(sum(p.reward_gap for p in pairs) / len(pairs)
                                             if pairs else 0.0),
                                 rollout_s=time.perf_counter() - t0)
                if progress:
                    log.info("round %d: reward %.4f, %d pairs", self.round, float(r.mean()),
                             len(pairs))
            batches = self.micro_batches(self.buffer)
            while self.position < len(batches):
                _comfy.check_interrupt()
                group = batches[self.position:self.position + cfg.train.grad_accum]
                metrics = self.train_step(self.buffer, group)
                self.position += len(group)
                if not math.isfinite(metrics["loss"]):
                    raise ScienceT2IError(f"loss became {metrics['loss']} at step {self.step}; "
                                          "lower optim.lr or keep optim.max_grad_norm > 0.")
                self.run_log.log(self.step, **metrics)
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save_checkpoint()
            self.round += 1
            self.buffer, self.position = None, 0
            if not cfg.checkpoint.every:
                self.save_checkpoint()
            if cfg.log.plot_every and self.round % cfg.log.plot_every == 0:
                self.plot()
        self.save_checkpoint()
        path = self.save_lora()
        self.plot()
        return path

    def plot(self) -> Path:
        return self.run_log.plot(["reward_mean", "loss", "win_rate"],
                                 self.output_dir / "reward.png")


def _scheduler_config(model_dir: Path) -> dict:
    f = model_dir / "scheduler" / "scheduler_config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def train_dpo(cfg: DPOConfig, resume: bool = False, comfy_servers: list[str] | None = None) -> Path:
    """Set up and run stage 2; returns the final LoRA path."""
    return DPOTrainer(cfg, resume=resume, comfy_servers=comfy_servers).setup().run()
