"""Rollouts on ComfyUI servers: the API-format rollout graph filled in per prompt and run
through the pack's ComfyUI client (``training/comfy/client.py``), which shares a round's
prompts among the servers and moves a failed server's prompts to the others.

The graph (``workflows/api/rollout.json``) marks the nodes this client fills in by their
``_meta.title``: "Rollout prompt", "Rollout latent", "Rollout sampler", "Rollout LoRA",
"Rollout SciScore", "Rollout subject mask", and the outputs "Rollout images" (Save Scored
Images: the PNGs carry each SciScore in their "sciscore" text chunk) / "Rollout masks".
ComfyUI caches node outputs by their inputs, so each round's LoRA gets a new file name.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...nodes.core import atomic_path
from ...nodes.errors import ScienceT2IError
from ..comfy.client import (ComfyClient, ComfyServer, ServerFailed, load_api_workflow,
                             nodes_titled)

__all__ = ["ComfyRolloutClient", "ComfyServer", "RolloutRequest", "ServerRollout",
           "fill_workflow", "load_workflow"]

TITLE_PROMPT = "Rollout prompt"
TITLE_LATENT = "Rollout latent"
TITLE_SAMPLER = "Rollout sampler"
TITLE_LORA = "Rollout LoRA"
TITLE_SCISCORE = "Rollout SciScore"
TITLE_MASK = "Rollout subject mask"
TITLE_IMAGES = "Rollout images"
TITLE_MASKS = "Rollout masks"
LORA_PREFIX = "science_t2i_rollout"


@dataclass
class RolloutRequest:
    index: int           # position in the round
    prompt: str
    subject: str
    seed: int
    num_images: int      # K images for this prompt


@dataclass
class ServerRollout:
    index: int
    images: torch.Tensor                 # [K, H, W, 3] 0..1
    masks: torch.Tensor | None           # [K, H, W] 0/1 from the subject-mask output, if any
    scores: torch.Tensor | None          # [K] SciScore from the graph's UI output, if any
    server: str


def load_workflow(path: str | Path) -> dict[str, Any]:
    """The rollout graph (API format)."""
    return load_api_workflow(path)


def _find(graph: dict, title: str, required: bool = True) -> str | None:
    titled = nodes_titled(graph, title)
    if titled:
        return titled[0]
    if required:
        raise ScienceT2IError(f"the rollout workflow has no node titled {title!r}; keep the "
                              "titles of workflows/api/rollout.json when editing it.")
    return None


def fill_workflow(graph: dict, request: RolloutRequest, lora_name: str | None,
                  size: tuple[int, int] | None = None) -> dict:
    """A copy of the graph with this request's prompt, subject, seed, image count and LoRA."""
    g = copy.deepcopy(graph)
    g[_find(g, TITLE_PROMPT)]["inputs"]["text"] = request.prompt
    latent = g[_find(g, TITLE_LATENT)]["inputs"]
    latent["batch_size"] = request.num_images
    if size is not None:
        latent["width"], latent["height"] = size
    g[_find(g, TITLE_SAMPLER)]["inputs"]["seed"] = request.seed
    lora = _find(g, TITLE_LORA, required=False)
    if lora is not None:
        if lora_name is None:
            # the pack's loader calls it strength, ComfyUI's LoraLoaderModelOnly strength_model
            inputs = g[lora]["inputs"]
            key = next((k for k in ("strength", "strength_model") if k in inputs), None)
            if key is None:
                raise ScienceT2IError(f"the rollout graph's '{TITLE_LORA}' node has no "
                                      "strength input to switch the LoRA off; use the pack's "
                                      "Science LoRA Loader or ComfyUI's LoraLoaderModelOnly.")
            inputs[key] = 0.0
        else:
            g[lora]["inputs"]["lora_name"] = lora_name
    for title in (TITLE_SCISCORE, TITLE_IMAGES):  # SciScore and Save Scored Images take it
        node = _find(g, title, required=False)
        if node is not None and "prompt" in g[node]["inputs"]:
            g[node]["inputs"]["prompt"] = request.prompt
    mask = _find(g, TITLE_MASK, required=False)
    if mask is not None:
        for key in ("subject", "text", "object", "caption"):
            if key in g[mask]["inputs"]:
                g[mask]["inputs"][key] = request.subject
                break
    return g


class ComfyRolloutClient(ComfyClient):
    """Run rollout requests on one or more ComfyUI servers."""

    def __init__(self, servers: list[ComfyServer | str], workflow: dict | str | Path, *,
                 poll_interval: float = 0.5, timeout: float = 1800.0,
                 request_timeout: float = 30.0, size: tuple[int, int] | None = None):
        super().__init__(servers, poll_interval=poll_interval, timeout=timeout,
                         request_timeout=request_timeout)
        self.workflow = workflow if isinstance(workflow, dict) else load_workflow(workflow)
        for title in (TITLE_PROMPT, TITLE_LATENT, TITLE_SAMPLER, TITLE_IMAGES):
            _find(self.workflow, title)
        self.size = size

    # --- LoRA publishing -------------------------------------------------------------------
    @staticmethod
    def lora_file_name(round_index: int) -> str:
        """The name a round's LoRA is published under (every process derives the same)."""
        return f"{LORA_PREFIX}_{round_index:06d}.safetensors"

    def publish_lora(self, lora_file: str | Path, round_index: int) -> str:
        """Copy the current LoRA into every server's LoRA folder (atomically, under a new name
        per round so ComfyUI's cache cannot serve the previous one) and delete older rounds'."""
        lora_file = Path(lora_file)
        name = self.lora_file_name(round_index)
        missing = [s.url for s in self.servers if s.lora_dir is None]
        if missing:
            raise ScienceT2IError(
                f"no LoRA folder for {', '.join(missing)}: write --comfy URL=LORA_DIR (the "
                "server's models/loras, mounted here) or set comfy.lora_dir to a folder all "
                "servers read.")
        dirs = {s.lora_dir.resolve() for s in self.servers}
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            with atomic_path(d / name) as tmp:
                shutil.copyfile(lora_file, tmp)
            for old in d.glob(f"{LORA_PREFIX}_*.safetensors"):
                if old.name != name:
                    old.unlink(missing_ok=True)
        return name

    # --- a request ---------------------------------------------------------------------------
    def _run_one(self, server: ComfyServer, request: RolloutRequest,
                 lora_name: str | None) -> ServerRollout:
        graph = fill_workflow(self.workflow, request, lora_name, self.size)
        outputs = self.wait(server, self.submit(server, graph))
        images_id = _find(graph, TITLE_IMAGES)
        masks_id = _find(graph, TITLE_MASKS, required=False)
        refs = outputs.get(images_id, {}).get("images", [])
        if len(refs) != request.num_images:
            raise ServerFailed(f"{server.url} returned {len(refs)} images for a request of "
                               f"{request.num_images}")
        images, texts = self.fetch_images(server, refs)
        masks = None
        if masks_id is not None and outputs.get(masks_id, {}).get("images"):
            masks = (self.fetch_images(server, outputs[masks_id]["images"])[0][..., 0] > 0.5).float()
        scores = _scores_from_png_text(texts)
        return ServerRollout(request.index, images, masks, scores, server.url)

    def run_round(self, requests: list[RolloutRequest], lora_name: str | None = None,
                  on_done: Any = None) -> list[ServerRollout]:
        """Run every request somewhere; results in request order. ``on_done(n)`` is called
        (from a worker thread) as each request's n images arrive."""
        done = None if on_done is None else (lambda request, _result: on_done(request.num_images))
        return self.run_all(requests, lambda server, r: self._run_one(server, r, lora_name),
                            done, what="prompts")


def _scores_from_png_text(texts: list[dict[str, str]]) -> torch.Tensor | None:
    """SciScore values that Save Scored Images wrote into each PNG ("sciscore" text chunk)."""
    scores = []
    for t in texts:
        try:
            scores.append(float(json.loads(t["sciscore"])["score"]))
        except (KeyError, ValueError, TypeError):
            return None
    return torch.tensor(scores, dtype=torch.float32)
