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

On N processes (``accelerate launch --multi_gpu --num_processes N -m
science_t2i.training.cli stage2``) process r samples, scores and masks the round's prompts
r, r + N, r + 2N, ... (each image's noise seeded by the prompt's place in the round and the
image's number, so the images do not depend on N); the rewards are gathered, so every
process knows the round's pairs and their training order. An optimizer step takes the next
``pairs_per_step * grad_accum * N`` pairs of that order; each process trains the ones it
sampled, every pair weighing the same, and DDP averages the gradients once per step. So N
processes train as one process with N times ``grad_accum`` would. The main process writes
checkpoints (each process adds its own rollouts) and the LoRA.

Run it with ``science-t2i stage2 --config FILE [key=value ...] [--comfy URL ...] [--resume]``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ...nodes.errors import ScienceT2IError
from ...nodes.lora import read_lora
from ..core.preflight import check_output_dir
from ..core.seeds import generator_for, seed_for
from ..core.trainer import run_scope
from ..flux.flow_matching import sample_sigmas
from ..flux.latent_cache import CachedPrompts, LatentCache, cache_prompts
from ..flux.lora_trainer import LoraTrainer
from ..flux.reference_policy import (REFERENCE_ADAPTER, adapter_active, adapter_disabled,
                                     merge_lora_into_weights, write_stacked_lora)
from ..flux.sampler import (Trajectory, draw_noise, latent_image_ids, pack_mask, predict_velocity,
                            transition_log_prob)
from .config import DEFAULT_WORKFLOW, Stage2Config
from .losses import Pair, flow_dpo_loss, flow_matching_inputs, oft_loss, select_pairs
from .rewards import build_reward, reward_for
from .rollouts import RolloutBatch, RolloutPrompt
from .rounds import Scheduled, gather_rewards, round_plan, round_prompts

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- trainer

class Stage2Trainer(LoraTrainer):
    """Builds everything from a :class:`Stage2Config`; ``run()`` trains ``train.rounds`` rounds.

    ``reward_fn`` / ``mask_fn`` replace the configured SciScore / GroundingDINO (tests, custom
    rewards); ``comfy_servers`` adds servers to ``comfy.servers``.
    """

    name = "stage2"
    memory_plan = "stage2"
    may_change_on_resume = ("output_dir", "lora_name", "train.rounds", "checkpoint", "log",
                            "comfy", "rollout.prompt_cache")
    plot_keys = ("reward_mean", "loss", "win_rate")
    plot_file = "reward.png"

    def __init__(self, cfg: Stage2Config, resume: bool = False,
                 comfy_servers: list[str] | None = None, reward_fn: Callable | None = None,
                 mask_fn: Callable | None = None):
        super().__init__(cfg, resume)
        self.stage = "oft" if cfg.objective.kind == "oft" else "flow-dpo"
        self.comfy_servers = list(cfg.comfy.servers) + list(comfy_servers or [])
        self.reward_fn = reward_fn
        self.mask_fn = mask_fn
        self.round = 0
        self.position = 0           # pairs of the round's training order already trained
        self.buffer: RolloutBatch | None = None       # this process's rollouts of the round
        self.round_rewards: torch.Tensor | None = None  # every process's rewards [P, K]

    # ---------------------------------------------------------------- setup
    def setup(self) -> "Stage2Trainer":
        from ..flux.model import FluxEncoders, scheduler_config, vae_scale_factor
        from .rollouts import load_rollout_prompts

        cfg = self.cfg
        self.check_memory(cfg.rollout.resolution)
        if not cfg.rollout.prompts:
            raise ScienceT2IError("rollout.prompts is not set; point it at a JSON list of "
                                  "{\"prompt\": ..., \"object\": ...} (e.g. the Science-T2I "
                                  "rollout prompt set).")
        self.prompts = load_rollout_prompts(cfg.rollout.prompts, masks=cfg.mask.enabled)
        self.start()
        if cfg.rollout.prompts_per_round < self.num_processes:
            raise ScienceT2IError(
                f"rollout.prompts_per_round={cfg.rollout.prompts_per_round} gives some of the "
                f"{self.num_processes} processes no prompt to sample; set it to at least "
                f"{self.num_processes} (a multiple of it keeps every process equally busy).")
        self.model_dir = self.resolve_model()
        self.vae_scale = vae_scale_factor(self.model_dir)
        if cfg.rollout.resolution % (2 * self.vae_scale):
            raise ScienceT2IError(f"rollout.resolution {cfg.rollout.resolution} must be a "
                                  f"multiple of {2 * self.vae_scale}.")
        self.encoders = FluxEncoders(self.model_dir, self.device, self.weight_dtype,
                                     cfg.rollout.max_sequence_length)
        self.conditioning = self._encode_prompts()   # before the transformer is loaded
        transformer = self.load_base(self.model_dir)
        self.sft_lora = None
        self.continuing = False   # training the SFT LoRA itself, a frozen copy the reference
        if cfg.model.sft_lora:
            self.sft_lora = read_lora(cfg.model.sft_lora)
            if cfg.model.sft_start == "merge":
                n = merge_lora_into_weights(transformer, self.sft_lora)
                log.info("merged the SFT LoRA (%d layers) into the weights: it is the "
                         "reference", n)
            else:
                self.continuing = True
                log.info("training the SFT LoRA on; a frozen copy of it is the reference")
        elif cfg.preset == "reference":
            log.warning("no model.sft_lora: the reference implementation starts stage 2 from "
                        "its SFT checkpoint; this run starts from the base model")
        self.setup_lora(transformer, self.estimated_steps(),
                        start_from=self.sft_lora if self.continuing else None)
        self._img_ids: dict[tuple[int, int], torch.Tensor] = {}
        self.scheduler_config = scheduler_config(self.model_dir)
        self.source = self._make_source()
        self.restore()
        return self

    @property
    def pairs_per_step(self) -> int:
        """Pairs of one optimizer step over all processes."""
        t = self.cfg.train
        return t.pairs_per_step * t.grad_accum * self.num_processes

    def estimated_steps(self) -> int:
        """Optimizer steps of the whole run if no pair is dropped (the schedule's length)."""
        r, t = self.cfg.rollout, self.cfg.train
        return t.rounds * math.ceil(r.prompts_per_round * t.inner_epochs / self.pairs_per_step)

    def _encode_prompts(self) -> CachedPrompts:
        """Every rollout prompt's T5/CLIP embeddings, encoded once into the prompt cache; the
        text encoders are released, so sampling and training run without them."""
        r = self.cfg.rollout
        if r.prompt_cache:
            check_output_dir(r.prompt_cache, "rollout.prompt_cache")
        folder = Path(r.prompt_cache).expanduser() if r.prompt_cache else \
            self.output_dir / "prompt_cache"
        acc = self.accelerator
        return cache_prompts([p.prompt for p in self.prompts], self.encoders, LatentCache(folder),
                             dtype=self.weight_dtype, batch_size=r.batch_size,
                             progress=self.cfg.log.progress and acc.is_local_main_process,
                             first=acc.main_process_first)

    def _reward(self) -> Callable:
        if self.reward_fn is not None:
            return self.reward_fn
        return build_reward(self.cfg.reward, self.device)

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
                self.unwrapped, self.encoders, resolution=r.resolution, num_steps=r.steps,
                churn=r.churn, guidance=r.guidance, vae_scale_factor=self.vae_scale,
                scheduler_config=self.scheduler_config, reward_fn=self._reward(),
                mask_fn=self._masks(), batch_size=r.batch_size, device=self.device,
                autocast=self.accelerator.autocast, text=self.conditioning)
        from .comfy_rollouts import ComfyRolloutClient, ComfyServer
        if not self.comfy_servers:
            raise ScienceT2IError("rollout.source=comfy needs servers: pass --comfy "
                                  "http://HOST:PORT[=LORA_DIR] or set comfy.servers.")
        servers = [ComfyServer.parse(s, cfg.comfy.lora_dir or None) for s in self.comfy_servers]
        client = ComfyRolloutClient(servers, cfg.comfy.workflow or DEFAULT_WORKFLOW,
                                    poll_interval=cfg.comfy.poll_interval,
                                    timeout=cfg.comfy.timeout,
                                    size=(r.resolution, r.resolution))
        # a reward the rollout graph computes (SciScore) comes back with the images
        in_graph = reward_for(cfg.reward.kind).scored_in_graph
        reward = self.reward_fn if self.reward_fn is not None else (
            None if in_graph else self._reward())
        return ComfyRollouts(client, self.encoders, resolution=r.resolution,
                             vae_scale_factor=self.vae_scale, reward_fn=reward,
                             mask_fn=self.mask_fn, use_masks=cfg.mask.enabled,
                             device=self.device, text=self.conditioning)

    def _publish_lora(self) -> None:
        """The current policy on the ComfyUI servers: written and copied by the main process
        (under the round's own name), which every process then asks the servers for."""
        client = self.source.client
        if self.is_main:
            path = self.save_lora(self.output_dir / "rollout_lora" / "current.safetensors")
            client.publish_lora(path, self.round)
        self.accelerator.wait_for_everyone()
        self.source.lora_name = client.lora_file_name(self.round)

    # ---------------------------------------------------------------- checkpoints
    def trainer_state(self) -> dict[str, Any]:
        state = {**super().trainer_state(), "round": self.round, "position": self.position}
        if self.round_rewards is not None:
            state["round_rewards"] = self.round_rewards
        return state

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        super().load_trainer_state(state)
        self.round, self.position = int(state["round"]), int(state["position"])
        self.round_rewards = state.get("round_rewards")
        if self.is_main:
            # the summary lines of rounds that will be sampled again go, or they would repeat
            first_new = self.round + (1 if self.round_rewards is not None else 0)
            self.run_log.drop(lambda r: "reward_mean" in r and int(r.get("round", -1)) >= first_new)

    def process_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.to_state()} if self.buffer is not None else {}

    def load_process_state(self, state: dict[str, Any]) -> None:
        self.buffer = RolloutBatch.from_state(state["buffer"]) if "buffer" in state else None
        if (self.buffer is None) != (self.round_rewards is None):
            raise ScienceT2IError("the checkpoint's rollouts are incomplete; resume from an "
                                  "older checkpoint (delete this one).")

    # ---------------------------------------------------------------- rounds
    def round_prompts(self, round_index: int) -> list[RolloutPrompt]:
        return round_prompts(self.prompts, self.cfg.train.seed, round_index,
                             self.cfg.rollout.prompts_per_round)

    def generate_round(self) -> tuple[RolloutBatch, torch.Tensor]:
        """This process's rollouts of the round (prompts rank, rank + N, ...) and the rewards
        of every process's rollouts [P, K]; logs the round's summary."""
        cfg = self.cfg
        t0 = time.perf_counter()
        prompts = self.round_prompts(self.round)
        mine = list(range(self.rank, len(prompts), self.num_processes))
        seeds = [seed_for(cfg.train.seed, 3, self.round, j) for j in mine]
        if cfg.rollout.source == "comfy":
            self._publish_lora()
        k = cfg.rollout.samples_per_prompt
        bar = self.progress(len(mine) * k, f"round {self.round} rollouts", unit="img",
                            leave=False)
        try:
            batch = self.source.generate([prompts[j] for j in mine], k, seeds,
                                         on_images=bar.update)
        finally:
            bar.close()
        batch.prompt_indices = mine
        rewards = gather_rewards(batch, len(prompts))
        pairs = select_pairs(rewards)
        self.log(self.step, round=self.round, reward_mean=float(rewards.mean()),
                 reward_std=float(rewards.std()), reward_max=float(rewards.max()),
                 reward_min=float(rewards.min()), pairs=len(pairs),
                 reward_gap=(sum(p.reward_gap for p in pairs) / len(pairs) if pairs else 0.0),
                 rollout_s=time.perf_counter() - t0)
        return batch, rewards

    def round_plan(self, rewards: torch.Tensor) -> list[Scheduled]:
        return round_plan(rewards, self.cfg.train.seed, self.round, self.cfg.train.inner_epochs,
                          keep_ties=self.cfg.objective.ties == "keep")

    # ---------------------------------------------------------------- losses
    def _rows(self, batch: RolloutBatch, chunk: list[Scheduled]) -> tuple[list[int], list[int]]:
        k = batch.k
        local = [batch.local_index(p.prompt_index) for _, p in chunk]
        return ([i * k + p.win for i, (_, p) in zip(local, chunk)],
                [i * k + p.lose for i, (_, p) in zip(local, chunk)])

    def _reference(self) -> contextlib.ExitStack:
        """Context of a reference forward: adapters off, no autograd bookkeeping at all."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.continuing:
            stack.enter_context(adapter_active(self.unwrapped, REFERENCE_ADAPTER))
        else:
            stack.enter_context(adapter_disabled(self.unwrapped))
        stack.enter_context(self.accelerator.autocast())
        return stack

    def oft_timesteps(self, num_steps: int) -> list[int]:
        """The recorded timesteps this optimizer step trains (all by default; a seeded subset
        with ``objective.timestep_fraction``, the same on every process)."""
        steps = list(range(num_steps))
        fraction = self.cfg.objective.timestep_fraction
        if fraction < 1:
            g = generator_for(self.cfg.train.seed, 13, self.step)
            keep = max(1, int(round(len(steps) * fraction)))
            steps = sorted(torch.randperm(len(steps), generator=g)[:keep].tolist())
        return steps

    def oft_step(self, batch: RolloutBatch, chunk: list[Scheduled], weights: torch.Tensor,
                 last: bool = True) -> dict[str, torch.Tensor]:
        """Backward of one micro-batch's oft loss, pair i weighing ``weights[i]`` (averaged
        over the trained timesteps); returns the weighted sums of its metrics (no sync)."""
        cfg, dev = self.cfg, self.device
        win, lose = self._rows(batch, chunk)
        idx = win + lose
        b = len(chunk)
        t = batch.trajectory
        if t is None:
            raise ScienceT2IError("objective oft needs in-process rollouts with trajectories.")
        sel = Trajectory(t.latents[idx].to(dev), t.log_probs[idx], t.noise[idx], t.sigmas, t.stds,
                         t.latent_height, t.latent_width)
        cond = batch.conditioning(idx, dev)
        mask = batch.latent_masks[idx].to(dev) if batch.latent_masks is not None else None
        steps = self.oft_timesteps(t.num_steps)
        w = weights.to(dev) / len(steps)
        # DDP averages the processes' gradients: scaled by N, the step's gradient is the
        # weighted sum over every process's pairs
        scale = self.num_processes
        clip = math.log(1 + cfg.objective.eps)
        sums = {k: torch.zeros((), device=dev) for k in ("loss", "win_rate", "clip_frac")}
        for n, j in enumerate(steps):
            with self._reference():
                lp_ref = transition_log_prob(self.unwrapped, sel, j, cond, mask=mask,
                                             guidance=cfg.rollout.guidance)
            with self.accumulating(last and n == len(steps) - 1):
                with self.accelerator.autocast():
                    lp = transition_log_prob(self.model, sel, j, cond, mask=mask,
                                             guidance=cfg.rollout.guidance)
                loss = self.pair_form(oft_loss(lp[:b], lp_ref[:b], lp[b:], lp_ref[b:],
                                               eps=cfg.objective.eps, beta=cfg.objective.beta,
                                               reduction="none"))
                self.accelerator.backward((w * loss).sum() * scale)
            with torch.no_grad():
                ratio = (lp - lp_ref).float()
                sums["loss"] += (w * loss.detach()).sum()
                sums["win_rate"] += (w * (ratio[:b] > ratio[b:]).float()).sum()
                clipped = (ratio.abs() > clip).float()
                sums["clip_frac"] += (w * (clipped[:b] + clipped[b:]) / 2).sum()
        return sums

    def pair_form(self, loss: torch.Tensor) -> torch.Tensor:
        """The winner-vs-loser loss L as ``objective.pair_loss`` counts it: L, or the mean of
        the reference's 2x2 matrix over the prompt's two samples, whose three other entries
        (a sample against itself, the loser against the winner) are -log sigmoid(0) = ln 2."""
        if self.cfg.objective.pair_loss == "matrix":
            return (loss + 3 * math.log(2)) / 4
        return loss

    def _image_ids(self, batch: RolloutBatch) -> torch.Tensor:
        key = (batch.latent_height, batch.latent_width)
        if key not in self._img_ids:
            self._img_ids[key] = latent_image_ids(*key, self.device)
        return self._img_ids[key]

    def flow_dpo_step(self, batch: RolloutBatch, chunk: list[Scheduled], weights: torch.Tensor,
                      last: bool = True) -> dict[str, torch.Tensor]:
        """Backward of one micro-batch's Flow-DPO loss, pair i weighing ``weights[i]``: win and
        lose share noise and noise level (drawn from the pair's own generator) and go through
        the reference and the policy as one batch each; returns weighted metric sums."""
        cfg, dev = self.cfg, self.device
        win, lose = self._rows(batch, chunk)
        b = len(chunk)
        gens = [generator_for(cfg.train.seed, 17, self.round, epoch, p.prompt_index)
                for epoch, p in chunk]
        x0 = batch.final_latents[win + lose].to(dev, torch.float32)
        noise = draw_noise(x0[:b].shape, gens, dev)                 # shared by win and lose
        sigma = torch.cat([sample_sigmas(1, cfg.objective.timestep_sampling, generator=g)
                           for g in gens]).to(dev)                   # shared
        sig2 = torch.cat([sigma, sigma])
        hidden, target = flow_matching_inputs(x0, torch.cat([noise, noise]), sig2)
        cond = batch.conditioning(win + lose, dev)
        img_ids = self._image_ids(batch)
        with self._reference():
            ref = predict_velocity(self.unwrapped, hidden, sig2, cond, img_ids,
                                   cfg.rollout.guidance)
        mw = ml = None
        if batch.latent_masks is not None:
            m = pack_mask(batch.latent_masks[win + lose], x0.shape[-1] // 4).to(dev)
            mw, ml = m[:b], m[b:]
        w = weights.to(dev)
        with self.accumulating(last):
            with self.accelerator.autocast():
                pred = predict_velocity(self.model, hidden, sig2, cond, img_ids,
                                        cfg.rollout.guidance)
            loss, stats = flow_dpo_loss(pred[:b], ref[:b], target[:b], pred[b:], ref[b:],
                                        target[b:], beta=cfg.objective.flow_dpo_beta,
                                        mask_win=mw, mask_lose=ml, reduction="none")
            loss = self.pair_form(loss)
            self.accelerator.backward((w * loss).sum() * self.num_processes)
        return {"loss": (w * loss.detach()).sum(), "win_rate": (w * stats["implicit_acc"]).sum(),
                "sigma_mean": (w * sigma).sum()}

    def train_step(self, batch: RolloutBatch, scheduled: list[Scheduled]) -> dict[str, Any]:
        """One optimizer step on ``scheduled`` (the step's pairs of every process): this
        process trains the pairs it sampled, in micro-batches of ``train.pairs_per_step``, each
        pair weighing 1 / len(scheduled); a process with none of them runs one pair at weight 0,
        so that the gradient all-reduce still has every process."""
        step_fn = self.oft_step if self.cfg.objective.kind == "oft" else self.flow_dpo_step
        mine = [s for s in scheduled if s[1].prompt_index % self.num_processes == self.rank]
        weight = 1.0 / len(scheduled)
        # a tied prompt (kept with objective.ties=keep) counts in the mean with its constant
        # loss ln 2 (every matrix entry, or L at a zero log-ratio gap: no gradient either
        # way), so it needs no forward pass
        ties = [s for s in mine if s[1].reward_gap <= 0]
        mine = [s for s in mine if s[1].reward_gap > 0]
        tie_sum = torch.tensor(weight * len(ties) * math.log(2), device=self.device)
        if not mine:
            mine, weight = [(0, Pair(batch.prompt_indices[0], 0, 1, 0.0))], 0.0
        size = self.cfg.train.pairs_per_step
        chunks = [mine[i:i + size] for i in range(0, len(mine), size)]
        sums: dict[str, torch.Tensor] = {}
        for c, chunk in enumerate(chunks):
            part = step_fn(batch, chunk, torch.full((len(chunk),), weight),
                           last=c == len(chunks) - 1)
            for key, value in part.items():
                sums[key] = sums.get(key, 0.0) + value
        sums["loss"] = sums["loss"] + tie_sum
        out = self.optimizer_step()
        return {**self.step_metrics(out, **self.sum_across(sums)), "round": self.round}

    # ---------------------------------------------------------------- outputs
    def save_lora(self, path: Path | None = None) -> Path:
        """The policy as one LoRA for the base model (SFT LoRA stacked in when there is one)."""
        path = Path(path or self.output_dir / self.cfg.lora_name)
        if self.sft_lora is None or self.continuing:
            return self.write_lora(path)   # the trained adapter is the whole policy
        delta_path = path.with_name(path.stem + ".delta.safetensors")
        self.write_lora(delta_path)
        write_stacked_lora(self.sft_lora, delta_path, path)
        delta_path.unlink(missing_ok=True)
        return path

    # ---------------------------------------------------------------- loop
    def run(self) -> Path:
        """Train ``train.rounds`` rounds; returns the final LoRA path."""
        from ...nodes import _comfy
        cfg = self.cfg
        self.begin_run()
        rounds = self.progress(cfg.train.rounds, "stage2", initial=self.round, unit="round")
        try:
            while self.round < cfg.train.rounds:
                _comfy.check_interrupt()
                if self.buffer is None:
                    self.buffer, self.round_rewards = self.generate_round()
                    self.position = 0
                self.train_round()
                self.round += 1
                self.buffer, self.round_rewards, self.position = None, None, 0
                rounds.update(1)
                if not cfg.checkpoint.every:
                    self.save_checkpoint()
                if cfg.log.plot_every and self.round % cfg.log.plot_every == 0:
                    self.plot()
        finally:
            rounds.close()
        self.save_checkpoint()
        path = self.output_dir / cfg.lora_name
        if self.is_main:
            self.save_lora(path)
        self.plot()
        self.end_run()
        return path

    def train_round(self) -> None:
        """The optimizer steps on the round's pairs, from ``position`` on."""
        from ...nodes import _comfy
        plan, size = self.round_plan(self.round_rewards), self.pairs_per_step
        bar = self.progress(math.ceil(len(plan) / size) if plan else 0,
                            f"round {self.round} training", initial=self.position // size,
                            leave=False)
        try:
            while self.position < len(plan):
                _comfy.check_interrupt()
                scheduled = plan[self.position:self.position + size]
                metrics = self.train_step(self.buffer, scheduled)
                self.position += len(scheduled)
                self.check_finite(metrics["loss"])
                if self.step % self.cfg.log.every == 0:
                    self.log(self.step, **metrics)
                bar.update(1)
                if self.cfg.checkpoint.every and self.step % self.cfg.checkpoint.every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()


def train_stage2(cfg: Stage2Config, resume: bool = False, comfy_servers: list[str] | None = None) -> Path:
    """Set up and run stage 2; returns the final LoRA path."""
    with run_scope(cfg):
        return Stage2Trainer(cfg, resume=resume, comfy_servers=comfy_servers).setup().run()
