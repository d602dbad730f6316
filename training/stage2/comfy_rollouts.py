"""Rollouts on ComfyUI servers: post the API-format rollout graph, poll its history, fetch images.

One thread per server pulls requests from a shared queue, so servers work in parallel and a
fast server takes more of the round. A server that refuses the graph, errors while running it,
times out or disappears is dropped for the rest of the round and its request goes back into the
queue for the others; the round fails only when no server is left.

The graph (``workflows/api/rollout.json``) marks the nodes this client fills in by their
``_meta.title``: "Rollout prompt", "Rollout latent", "Rollout sampler", "Rollout LoRA",
"Rollout SciScore", "Rollout subject mask", and the outputs "Rollout images" (Save Scored
Images: the PNGs carry each SciScore in their "sciscore" text chunk) / "Rollout masks".
ComfyUI caches node outputs by their inputs, so each round's LoRA gets a new file name.
"""
from __future__ import annotations

import copy
import json
import logging
import queue
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...nodes.core import atomic_path
from ...nodes.errors import ScienceT2IError

log = logging.getLogger("science_t2i.comfy")

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
class ComfyServer:
    """A ComfyUI server and the folder its LoRA loader reads (its models/loras, mounted here,
    or a folder shared by all servers)."""
    url: str
    lora_dir: Path | None = None

    @classmethod
    def parse(cls, spec: str, default_lora_dir: str | Path | None = None) -> "ComfyServer":
        """``http://host:8188`` or ``http://host:8188=/path/to/ComfyUI/models/loras``."""
        url, _, lora = spec.partition("=")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ScienceT2IError(
                f"--comfy {spec!r} is not a server URL; write it as http://HOST:PORT, "
                "optionally followed by =LORA_DIR (the server's models/loras folder).")
        lora_dir = lora or default_lora_dir
        return cls(url.rstrip("/"), Path(lora_dir) if lora_dir else None)


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


class ServerFailed(Exception):
    """This server cannot serve the request (its prompt goes back into the queue)."""


@dataclass
class _Round:
    pending: "queue.Queue[RolloutRequest]"
    total: int
    on_done: Any = None          # called with the number of images of each finished request
    results: dict[int, ServerRollout] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def load_workflow(path: str | Path) -> dict[str, Any]:
    """The rollout graph, read as ``validate-workflow`` reads workflows; API format only."""
    from ..comfy.workflow_check import load_workflow as read_workflow
    graph = read_workflow(path)
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n
                                              for n in graph.values()):
        raise ScienceT2IError(f"{path} is not an API-format ComfyUI workflow (node id -> "
                              "{class_type, inputs}); export it with 'Save (API Format)'.")
    return graph


def _find(graph: dict, title: str, required: bool = True) -> str | None:
    for node_id, node in graph.items():
        if node.get("_meta", {}).get("title") == title:
            return node_id
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


class ComfyRolloutClient:
    """Run rollout requests on one or more ComfyUI servers."""

    def __init__(self, servers: list[ComfyServer | str], workflow: dict | str | Path, *,
                 poll_interval: float = 0.5, timeout: float = 1800.0,
                 request_timeout: float = 30.0, size: tuple[int, int] | None = None):
        if not servers:
            raise ScienceT2IError("no ComfyUI servers given; pass --comfy http://HOST:PORT.")
        self.servers = [s if isinstance(s, ComfyServer) else ComfyServer.parse(s) for s in servers]
        self.workflow = workflow if isinstance(workflow, dict) else load_workflow(workflow)
        for title in (TITLE_PROMPT, TITLE_LATENT, TITLE_SAMPLER, TITLE_IMAGES):
            _find(self.workflow, title)
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.size = size
        self.client_id = uuid.uuid4().hex

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

    # --- HTTP --------------------------------------------------------------------------------
    def _http(self, server: ComfyServer, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(server.url + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ServerFailed(f"{server.url} unreachable: {exc}") from exc

    def _submit(self, server: ComfyServer, graph: dict) -> str:
        status, raw = self._http(server, "/prompt", {"prompt": graph, "client_id": self.client_id})
        try:
            reply = json.loads(raw or b"{}")
        except ValueError:
            reply = {}
        if status != 200 or "prompt_id" not in reply:
            raise ServerFailed(f"{server.url} rejected the rollout graph (HTTP {status}): "
                               f"{_describe_error(reply)}")
        if reply.get("node_errors"):
            # ComfyUI queues the graph's valid outputs and answers 200 with the invalid nodes
            # listed: the rollout would run without them and fail later elsewhere
            self._forget(server, reply["prompt_id"])
            raise ServerFailed(f"{server.url} accepted the rollout graph only in part (HTTP "
                               f"200 with node errors): {_describe_error(reply)}")
        return reply["prompt_id"]

    def _forget(self, server: ComfyServer, prompt_id: str) -> None:
        """Take a queued prompt off the server's queue (best effort)."""
        try:
            self._http(server, "/queue", {"delete": [prompt_id]})
        except ServerFailed:
            pass

    def _wait(self, server: ComfyServer, prompt_id: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            status, raw = self._http(server, f"/history/{prompt_id}")
            if status != 200:
                raise ServerFailed(f"{server.url} answered HTTP {status} for its history")
            entry = json.loads(raw or b"{}").get(prompt_id)
            if entry:
                state = entry.get("status") or {}
                if state.get("status_str") == "error":
                    raise ServerFailed(f"{server.url} failed running the graph: "
                                       f"{_execution_error(state)}")
                if state.get("completed", True):
                    return entry.get("outputs", {})
            time.sleep(self.poll_interval)
        raise ServerFailed(f"{server.url} did not finish within {self.timeout:.0f} s")

    def _fetch_images(self, server: ComfyServer,
                      refs: list[dict]) -> tuple[torch.Tensor, list[dict[str, str]]]:
        """The images of a history output and their PNG text chunks."""
        import io

        from PIL import Image

        from ...nodes.core import from_pil
        out, texts = [], []
        for ref in refs:
            query = urllib.parse.urlencode({"filename": ref["filename"],
                                            "subfolder": ref.get("subfolder", ""),
                                            "type": ref.get("type", "output")})
            status, raw = self._http(server, f"/view?{query}")
            if status != 200:
                raise ServerFailed(f"{server.url} could not serve image {ref['filename']} "
                                   f"(HTTP {status})")
            img = Image.open(io.BytesIO(raw))
            img.load()
            texts.append(dict(getattr(img, "text", {}) or {}))
            out.append(from_pil(img))
        return torch.cat(out), texts

    def _run_one(self, server: ComfyServer, request: RolloutRequest,
                 lora_name: str | None) -> ServerRollout:
        graph = fill_workflow(self.workflow, request, lora_name, self.size)
        outputs = self._wait(server, self._submit(server, graph))
        images_id = _find(graph, TITLE_IMAGES)
        masks_id = _find(graph, TITLE_MASKS, required=False)
        refs = outputs.get(images_id, {}).get("images", [])
        if len(refs) != request.num_images:
            raise ServerFailed(f"{server.url} returned {len(refs)} images for a request of "
                               f"{request.num_images}")
        images, texts = self._fetch_images(server, refs)
        masks = None
        if masks_id is not None and outputs.get(masks_id, {}).get("images"):
            masks = (self._fetch_images(server, outputs[masks_id]["images"])[0][..., 0] > 0.5).float()
        scores = _scores_from_png_text(texts)
        return ServerRollout(request.index, images, masks, scores, server.url)

    # --- the round ---------------------------------------------------------------------------
    def _worker(self, server: ComfyServer, state: _Round, lora_name: str | None) -> None:
        while True:
            with state.lock:
                if len(state.results) == state.total:
                    return
            try:
                request = state.pending.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                result = self._run_one(server, request, lora_name)
            except ServerFailed as exc:
                log.warning("dropping ComfyUI server for this round: %s", exc)
                with state.lock:
                    state.failures[server.url] = str(exc)
                state.pending.put(request)
                return
            except Exception as exc:  # a broken reply is this server's fault, not the round's
                with state.lock:
                    state.failures[server.url] = f"{server.url}: {exc!r}"
                state.pending.put(request)
                return
            with state.lock:
                state.results[request.index] = result
                if state.on_done is not None:
                    state.on_done(request.num_images)

    def run_round(self, requests: list[RolloutRequest], lora_name: str | None = None,
                  on_done: Any = None) -> list[ServerRollout]:
        """Run every request somewhere; results in request order. ``on_done(n)`` is called
        (from a worker thread) as each request's n images arrive."""
        state = _Round(queue.Queue(), len(requests), on_done)
        for r in requests:
            state.pending.put(r)
        threads = [threading.Thread(target=self._worker, args=(s, state, lora_name), daemon=True,
                                    name=f"comfy-{i}") for i, s in enumerate(self.servers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(state.results) < len(requests):
            details = "; ".join(state.failures.values()) or "no server answered"
            raise ScienceT2IError(
                f"ComfyUI rollouts failed on every server ({len(state.results)} of "
                f"{len(requests)} prompts done): {details}. Check that each server runs with this "
                "pack installed and has the models named in the rollout workflow.")
        return [state.results[r.index] for r in requests]


def _scores_from_png_text(texts: list[dict[str, str]]) -> torch.Tensor | None:
    """SciScore values that Save Scored Images wrote into each PNG ("sciscore" text chunk)."""
    scores = []
    for t in texts:
        try:
            scores.append(float(json.loads(t["sciscore"])["score"]))
        except (KeyError, ValueError, TypeError):
            return None
    return torch.tensor(scores, dtype=torch.float32)


def _describe_error(reply: dict) -> str:
    err = reply.get("error")
    parts = []
    if isinstance(err, dict):
        parts.append(err.get("message") or err.get("type") or str(err))
    elif err:
        parts.append(str(err))
    for node_id, info in (reply.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            parts.append(f"node {node_id} ({info.get('class_type', '?')}): "
                         f"{e.get('message', '')} {e.get('details', '')}".strip())
    return "; ".join(parts) or "no reason given"


def _execution_error(state: dict) -> str:
    for event, data in state.get("messages", []):
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_message', '').strip()}")
    return "execution error"
