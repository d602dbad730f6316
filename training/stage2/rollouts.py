"""Stage-2 rollouts: prompts -> K images per prompt, rewards and subject masks.

Two sources behind one interface (``generate(prompts, k, seed) -> RolloutBatch``):

- :class:`InProcessRollouts` samples with the stochastic Euler sampler (``flux.sampler``) and
  keeps every trajectory, which the "oft" objective needs;
- :class:`ComfyRollouts` runs ``workflows/api/rollout.json`` on ComfyUI servers
  (``comfy_rollouts``); the images are VAE-encoded here for the "flow-dpo" objective.

Rewards and masks are computed by the same node code in both (``nodes/sciscore``,
``nodes/masks``), or taken from the graph's outputs when the servers already ran them.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
import torch.nn.functional as F

from ...nodes import _comfy
from ...nodes.errors import ScienceT2IError
from ..core.readers import read_json
from ..core.seeds import seed_for
from ..flux.sampler import (FluxConditioning, Trajectory, decode_latents, latent_grid,
                            pack_latents, sample_trajectory)
from .rewards import RewardFn
from .rewards.brightness import brightness

log = logging.getLogger(__name__)


# images [B,H,W,3], subjects, (latent h, w) -> latent masks [B,1,h,w] (0/1)
MaskFn = Callable[[torch.Tensor, list[str], tuple[int, int]], torch.Tensor]


@dataclass(frozen=True)
class RolloutPrompt:
    prompt: str
    subject: str


def load_rollout_prompts(path: str | Path, masks: bool = True) -> list[RolloutPrompt]:
    """A JSON list of {"prompt": ..., "object": ...} (the Science-T2I rollout prompt set).

    "object" is the subject GroundingDINO masks; with ``masks`` every entry needs one (looking
    for the whole prompt text instead would quietly give worse masks, and without the mask
    stage-2 training collapses). Without masks it is not used and may be left out.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ScienceT2IError(f"rollout prompt file {path} not found; set rollout.prompts to a "
                              "JSON list of {\"prompt\": ..., \"object\": ...} entries.")
    data = read_json(path, "rollout prompt file", fix="fix it or point rollout.prompts at "
                     "another file")
    if not isinstance(data, list) or not data:
        raise ScienceT2IError(f"{path} must hold a non-empty JSON list of "
                              "{\"prompt\": ..., \"object\": ...} entries.")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not str(item.get("prompt", "")).strip():
            raise ScienceT2IError(f"{path}: entry {i} has no \"prompt\"; each entry needs "
                                  "\"prompt\" and \"object\" (the subject to mask).")
        subject = str(item.get("object") or "").strip()
        out.append(RolloutPrompt(str(item["prompt"]).strip(), subject))
    _check_subjects(out, path, masks)
    return out


def _check_subjects(prompts: list[RolloutPrompt], path: Path, masks: bool) -> None:
    """Refuse prompts without "object" when masks need it; otherwise say they are unused."""
    lacking = [i for i, p in enumerate(prompts) if not p.subject]
    if not lacking:
        return
    shown = ", ".join(map(str, lacking[:5])) + (", ..." if len(lacking) > 5 else "")
    if masks:
        raise ScienceT2IError(
            f"{path}: {len(lacking)} of {len(prompts)} entries have no \"object\" (entries "
            f"{shown}), the subject GroundingDINO masks (mask.enabled=true); add it to each "
            "entry (the prompt's main noun, e.g. \"glass\"), or set mask.enabled=false to "
            "train without subject masks.")
    log.info("%s: %d of %d entries have no \"object\"; not needed with mask.enabled=false",
             path, len(lacking), len(prompts))


@dataclass
class RolloutBatch:
    """One process's rollouts of a round; sample i belongs to prompt i // k, which is prompt
    ``prompt_indices[i // k]`` of the round (all of them, in order, with one process)."""
    prompts: list[RolloutPrompt]
    k: int
    images: torch.Tensor                   # [P*K, H, W, 3]
    rewards: torch.Tensor                  # [P, K]
    final_latents: torch.Tensor            # [P*K, seq, 4C] packed clean latents (x0)
    prompt_embeds: torch.Tensor            # [P*K, L, D]
    pooled_embeds: torch.Tensor            # [P*K, P']
    latent_masks: Optional[torch.Tensor]   # [P*K, 1, h, w] or None (no masking)
    latent_height: int
    latent_width: int
    trajectory: Optional[Trajectory] = None
    prompt_indices: Optional[list[int]] = None

    def __post_init__(self) -> None:
        if self.prompt_indices is None:
            self.prompt_indices = list(range(len(self.prompts)))

    def local_index(self, prompt_index: int) -> int:
        """Row of a round's prompt in this batch."""
        return self.prompt_indices.index(prompt_index)

    def conditioning(self, index: list[int] | torch.Tensor, device: Any) -> FluxConditioning:
        idx = torch.as_tensor(index, dtype=torch.long)
        pe = self.prompt_embeds[idx].to(device)
        return FluxConditioning(pe, self.pooled_embeds[idx].to(device),
                                torch.zeros(pe.shape[1], 3, device=device))

    def to_state(self) -> dict[str, Any]:
        """Checkpointable form (tensors, strings, numbers)."""
        state: dict[str, Any] = {
            "prompts": [p.prompt for p in self.prompts], "subjects": [p.subject for p in self.prompts],
            "k": self.k, "images": self.images, "rewards": self.rewards,
            "final_latents": self.final_latents, "prompt_embeds": self.prompt_embeds,
            "pooled_embeds": self.pooled_embeds, "latent_height": self.latent_height,
            "latent_width": self.latent_width, "prompt_indices": list(self.prompt_indices)}
        if self.latent_masks is not None:
            state["latent_masks"] = self.latent_masks
        if self.trajectory is not None:
            t = self.trajectory
            state["trajectory"] = {"latents": t.latents, "log_probs": t.log_probs,
                                   "noise": t.noise, "sigmas": t.sigmas, "stds": t.stds}
        return state

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "RolloutBatch":
        traj = None
        if "trajectory" in s:
            t = s["trajectory"]
            traj = Trajectory(t["latents"], t["log_probs"], t["noise"], t["sigmas"], t["stds"],
                              int(s["latent_height"]), int(s["latent_width"]))
        return cls([RolloutPrompt(p, o) for p, o in zip(s["prompts"], s["subjects"])],
                   int(s["k"]), s["images"], s["rewards"], s["final_latents"],
                   s["prompt_embeds"], s["pooled_embeds"], s.get("latent_masks"),
                   int(s["latent_height"]), int(s["latent_width"]), traj,
                   [int(i) for i in s["prompt_indices"]])


# called with the number of images just finished (a progress bar's update)
ProgressFn = Callable[[int], None]


class RolloutSource(Protocol):
    def generate(self, prompts: list[RolloutPrompt], k: int, seeds: list[int],
                 on_images: ProgressFn | None = None) -> RolloutBatch: ...


def image_mask_to_latent(masks: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Image masks [B,H,W] (0/1) -> latent masks [B,1,h,w]: a latent cell is inside when any
    of its pixels is (area average > 0), so a thin subject keeps its cells."""
    m = F.adaptive_avg_pool2d(masks.float().unsqueeze(1), latent_hw)
    return (m > 0).float()


def gdino_latent_masks(model: str, *, box_threshold: float = 0.35, text_threshold: float = 0.25,
                       device: Any = None) -> MaskFn:
    """The paper's subject mask: GroundingDINO boxes of the subject, merged into one widened box,
    set as a 0/1 box on the latent grid (the whole image when nothing is detected)."""
    from ...nodes.masks import load_grounding_dino, paper_latent_box_mask
    detector = load_grounding_dino(model, device=device)

    def mask_fn(images: torch.Tensor, subjects: list[str],
                latent_hw: tuple[int, int]) -> torch.Tensor:
        out = []
        for img, subject in zip(images, subjects):
            (det,) = detector.detect(img.unsqueeze(0), subject, box_threshold, text_threshold)
            out.append(paper_latent_box_mask(det.merged_box_cxcywh()[None], *latent_hw)[0])
        _comfy.offload(detector.handle)   # on the GPU only while masking
        return torch.stack(out).unsqueeze(1).float()
    return mask_fn


# ----------------------------------------------------------------------------- sources

def _expand(prompts: list[RolloutPrompt], k: int) -> tuple[list[str], list[str]]:
    texts = [p.prompt for p in prompts for _ in range(k)]
    subjects = [p.subject or p.prompt for p in prompts for _ in range(k)]
    return texts, subjects


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


class InProcessRollouts:
    """Sample with the policy itself, keeping trajectories (needed by "oft")."""

    def __init__(self, transformer: torch.nn.Module, encoders: Any, *, resolution: int = 512,
                 num_steps: int = 30, churn: float = 0.1, guidance: float = 0.0,
                 vae_scale_factor: int = 8, scheduler_config: dict | None = None,
                 reward_fn: RewardFn = brightness, mask_fn: MaskFn | None = None,
                 batch_size: int = 8, device: Any = "cpu", autocast: Any = None,
                 text: Any = None):
        self.transformer = transformer
        self.encoders = encoders
        self.text = text if text is not None else encoders   # .encode_prompts(texts)
        self.resolution = resolution
        self.num_steps = num_steps
        self.churn = churn
        self.guidance = guidance
        self.vae_scale = vae_scale_factor
        self.scheduler_config = scheduler_config
        self.reward_fn = reward_fn
        self.mask_fn = mask_fn
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.autocast = autocast

    def generate(self, prompts: list[RolloutPrompt], k: int, seeds: list[int],
                 on_images: ProgressFn | None = None) -> RolloutBatch:
        """K images per prompt; image j of prompt i draws all its noise from a generator
        seeded by (seeds[i], j), whichever batch it is sampled in."""
        texts, subjects = _expand(prompts, k)
        seq, pooled = self.text.encode_prompts(texts)
        seq, pooled = seq.float(), pooled.float()
        lh, lw = latent_grid(self.resolution, self.resolution, self.vae_scale)
        generators = [torch.Generator().manual_seed(seed_for(seed, j))
                      for seed in seeds for j in range(k)]
        trajs = []
        was_training = self.transformer.training
        self.transformer.eval()
        try:
            for idx in _chunks(len(texts), self.batch_size):
                cond = FluxConditioning(seq[idx].to(self.device), pooled[idx].to(self.device),
                                        torch.zeros(seq.shape[1], 3, device=self.device))
                ctx = self.autocast() if self.autocast is not None else contextlib.nullcontext()
                with ctx:
                    t = sample_trajectory(self.transformer, cond, height=self.resolution,
                                          width=self.resolution, num_steps=self.num_steps,
                                          churn=self.churn, guidance=self.guidance,
                                          generator=[generators[i] for i in idx],
                                          scheduler_config=self.scheduler_config,
                                          vae_scale_factor=self.vae_scale)
                trajs.append(Trajectory(t.latents.cpu(), t.log_probs.cpu(), t.noise.cpu(),
                                        t.sigmas, t.stds, lh, lw))
                if on_images is not None:
                    on_images(len(idx))
        finally:
            self.transformer.train(was_training)
        traj = Trajectory(torch.cat([t.latents for t in trajs]), torch.cat([t.log_probs for t in trajs]),
                          torch.cat([t.noise for t in trajs]), trajs[0].sigmas, trajs[0].stds, lh, lw)
        images = torch.cat([decode_latents(self.encoders.vae, traj.final[idx].to(self.device), lh, lw)
                            for idx in _chunks(len(texts), self.batch_size)])
        rewards = self.reward_fn(images, texts).float().reshape(len(prompts), k)
        masks = self.mask_fn(images, subjects, (lh, lw)).float() if self.mask_fn else None
        return RolloutBatch(list(prompts), k, images, rewards, traj.final.clone(), seq.cpu(),
                            pooled.cpu(), masks, lh, lw, traj)


class ComfyRollouts:
    """Generate on ComfyUI servers; rewards/masks from the graph outputs or computed here."""

    def __init__(self, client: Any, encoders: Any, *, resolution: int = 512,
                 vae_scale_factor: int = 8, reward_fn: RewardFn | None = None,
                 mask_fn: MaskFn | None = None, use_masks: bool = True,
                 device: Any = "cpu", text: Any = None):
        self.client = client
        self.encoders = encoders
        self.text = text if text is not None else encoders   # .encode_prompts(texts)
        self.resolution = resolution
        self.vae_scale = vae_scale_factor
        self.reward_fn = reward_fn
        self.mask_fn = mask_fn
        self.use_masks = use_masks
        self.device = torch.device(device)
        self.lora_name: str | None = None   # the round's LoRA, published on the servers

    def generate(self, prompts: list[RolloutPrompt], k: int, seeds: list[int],
                 on_images: ProgressFn | None = None) -> RolloutBatch:
        """One request per prompt (K images from the graph's seed ``seeds[i]``), spread over
        the servers, with the LoRA last published (``lora_name``)."""
        from .comfy_rollouts import RolloutRequest
        requests = [RolloutRequest(i, p.prompt, p.subject or p.prompt, int(seed), k)
                    for i, (p, seed) in enumerate(zip(prompts, seeds))]
        results = self.client.run_round(requests, self.lora_name, on_done=on_images)
        texts, subjects = _expand(prompts, k)
        res = self.resolution
        images = torch.cat([_resize_images(r.images, res) for r in results])
        lh, lw = latent_grid(res, res, self.vae_scale)
        if all(r.scores is not None for r in results):
            rewards = torch.cat([r.scores for r in results])
        elif self.reward_fn is not None:
            rewards = self.reward_fn(images, texts)
        else:
            raise ScienceT2IError("the ComfyUI servers returned no SciScore values (is the "
                                  "'Rollout images' node Save Scored Images?) and no local "
                                  "reward is configured.")
        masks = None
        if self.use_masks:
            if all(r.masks is not None for r in results):
                masks = image_mask_to_latent(
                    torch.cat([_resize_masks(r.masks, res) for r in results]), (lh, lw))
            elif self.mask_fn is not None:
                masks = self.mask_fn(images, subjects, (lh, lw)).float()
        seq, pooled = self.text.encode_prompts(texts)
        x0 = self.encode_images(images)
        return RolloutBatch(list(prompts), k, images, rewards.float().reshape(len(prompts), k),
                            x0, seq.float().cpu(), pooled.float().cpu(), masks, lh, lw, None)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE [B,H,W,3] -> packed scaled VAE latents (the posterior mean)."""
        vae = self.encoders.vae
        pixels = images.permute(0, 3, 1, 2).to(self.device, next(vae.parameters()).dtype) * 2 - 1
        mean = vae.encode(pixels).latent_dist.mean.float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return pack_latents((mean - shift) * vae.config.scaling_factor).cpu()


def _resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[1] == size and images.shape[2] == size:
        return images
    x = F.interpolate(images.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                      antialias=True, align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def _resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    if masks.shape[1] == size and masks.shape[2] == size:
        return masks
    return F.interpolate(masks.unsqueeze(1), size=(size, size), mode="nearest")[:, 0]
