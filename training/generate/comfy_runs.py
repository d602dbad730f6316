"""A text-to-image run for the Science-T2I benchmark from any ComfyUI API workflow: each
image's prompt, seed and size are written into the nodes the user names, the graph runs on
one of several ComfyUI servers, and the image it saves is kept as the server wrote it, in
``RUN/{ip,ep,sp}/<record index>_<k>.png`` (the layout of ``flux_runs`` and ``eval-t2i``).

The workflow holds everything else (model, LoRAs, sampler, steps, guidance), so any model
ComfyUI runs can be benchmarked. Seeds are those of ``flux_runs`` (they depend only on the
seed, record, kind and sample). Resumable: an image on disk is kept; each is written to a
temporary file and renamed, so a server failing mid-run loses nothing already made.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...nodes import _comfy
from ...nodes.core import write_bytes_atomic
from ...nodes.errors import ScienceT2IError
from ..comfy.client import ComfyClient, ComfyServer, ServerFailed, find_node, nodes_titled
from ..core.seeds import seed_for
from .flux_runs import KIND_CODES, KIND_FIELDS, planned_images

log = logging.getLogger(__name__)

# the node titles looked for when no node is named (workflows/api/bench_generate.json has them)
DEFAULT_NODES = {"prompt": "Bench prompt", "seed": "Bench seed", "size": "Bench size",
                 "output": "Bench images"}
_PROMPT_INPUTS = ("text", "prompt", "value", "string", "text_g")
_SEED_INPUTS = ("seed", "noise_seed", "value")
_OUTPUT_CLASSES = ("SaveImage", "ScienceT2I_SaveScoredImages", "Image Save")


@dataclass(frozen=True)
class WorkflowSlots:
    """Where a request goes in the graph: (node id, input name) of the prompt and the seed,
    the node whose width/height (and batch_size, set to 1) take the size, the output node."""
    prompt: tuple[str, str]
    seed: tuple[str, str]
    size: str | None
    output: str | None


def _slot(graph: dict, spec: str, role: str, names: Sequence[str], kind: type) -> tuple[str, str]:
    """``NODE`` or ``NODE.input`` (NODE an id or a title) -> (node id, input name)."""
    node_name, dot, input_name = spec.rpartition(".")
    if not dot or not (node_name in graph or nodes_titled(graph, node_name)):
        node_name, input_name = spec, ""     # a title may hold dots
    node = find_node(graph, node_name, role)
    inputs = graph[node].get("inputs", {})
    candidates = [input_name] if input_name else [n for n in names if n in inputs]
    for name in candidates:
        if name in inputs and isinstance(inputs[name], kind) and not isinstance(inputs[name], bool):
            return node, name
    shown = ", ".join(f"{k}={v!r}" for k, v in inputs.items()) or "none"
    what = f"input {input_name!r}" if input_name else f"a {kind.__name__} input named " \
        + " or ".join(names)
    raise ScienceT2IError(f"the {role} node {node} ({graph[node]['class_type']}) has no {what} "
                          f"set to a value (a link from another node cannot be filled in). Its "
                          f"inputs: {shown}. Name the input as NODE.INPUT.")


def workflow_slots(graph: dict, prompt: str | None = None, seed: str | None = None,
                   size: str | None = None, output: str | None = None) -> WorkflowSlots:
    """Find the named nodes (default: the ``DEFAULT_NODES`` titles) before any work; a named
    node that is missing, or lacks the input, is refused with the graph's nodes listed."""
    p = _slot(graph, prompt or DEFAULT_NODES["prompt"], "prompt", _PROMPT_INPUTS, str)
    s = _slot(graph, seed or DEFAULT_NODES["seed"], "seed", _SEED_INPUTS, int)
    size_node = None
    if size or nodes_titled(graph, DEFAULT_NODES["size"]):
        size_node = find_node(graph, size or DEFAULT_NODES["size"], "size")
        inputs = graph[size_node].get("inputs", {})
        if not all(isinstance(inputs.get(k), int) for k in ("width", "height")):
            raise ScienceT2IError(f"the size node {size_node} ({graph[size_node]['class_type']}) "
                                  "has no width and height values to fill in; name the "
                                  "empty-latent node.")
    out = None
    if output or nodes_titled(graph, DEFAULT_NODES["output"]):
        out = find_node(graph, output or DEFAULT_NODES["output"], "output")
    else:
        saving = [nid for nid, n in graph.items() if n.get("class_type") in _OUTPUT_CLASSES]
        if len(saving) != 1:
            raise ScienceT2IError(
                f"the workflow has {len(saving)} image-saving nodes "
                f"({', '.join(saving) or 'none'}); name the one whose image is benchmarked "
                "with --output-node (a SaveImage node: previews are not kept by the server).")
        out = saving[0]
    return WorkflowSlots(p, s, size_node, out)


def fill_graph(graph: dict, slots: WorkflowSlots, prompt: str, seed: int,
               size: int | None) -> dict:
    g = json.loads(json.dumps(graph))
    g[slots.prompt[0]]["inputs"][slots.prompt[1]] = prompt
    g[slots.seed[0]]["inputs"][slots.seed[1]] = seed
    if slots.size is not None:
        inputs = g[slots.size]["inputs"]
        if size is not None:
            inputs["width"] = inputs["height"] = size
        if "batch_size" in inputs:
            inputs["batch_size"] = 1
    return g


def generate_comfy_run(client: ComfyClient, graph: dict, slots: WorkflowSlots,
                       records: Sequence[Any], run_dir: str | Path, *, samples: int = 1,
                       seed: int = 0, size: int | None = None) -> dict:
    """Generate what is missing of the run on the client's servers; returns counts."""
    run_dir = Path(run_dir)
    plan = planned_images(records, samples)
    todo = [p for p in plan if not (run_dir / p[0] / f"{p[1].index}_{p[2]}.png").is_file()]
    for kind in KIND_FIELDS:
        (run_dir / kind).mkdir(parents=True, exist_ok=True)
    about = {"source": "comfyui", "servers": [s.url for s in client.servers],
             "workflow_sha256": hashlib.sha256(json.dumps(graph, sort_keys=True).encode())
             .hexdigest(), "slots": slots.__dict__, "size": size, "samples": samples,
             "seed": seed}
    write_bytes_atomic(run_dir / "generation.json", json.dumps(about, indent=1).encode())
    log.info("run %s: %d images planned, %d already there, on %d ComfyUI server(s)", run_dir,
             len(plan), len(plan) - len(todo), len(client.servers))
    draw_comfy_images(client, graph, slots, [
        (run_dir / kind / f"{rec.index}_{k}.png", prompt,
         seed_for(seed, rec.index, KIND_CODES[kind], k)) for kind, rec, k, prompt in todo], size)
    return {"planned": len(plan), "generated": len(todo), "kept": len(plan) - len(todo)}


def draw_comfy_images(client: ComfyClient, graph: dict, slots: WorkflowSlots,
                      jobs: Sequence[tuple[Path, str, int]], size: int | None = None) -> None:
    """Each (target file, prompt, seed) drawn by the workflow on whichever server is free;
    the server's PNG written atomically as it arrives."""
    def run_one(server: ComfyServer, job: tuple) -> Path:
        target, prompt, seed = job
        outputs = client.wait(server, client.submit(server, fill_graph(graph, slots, prompt,
                                                                      seed, size)))
        refs = outputs.get(slots.output, {}).get("images", [])
        if len(refs) != 1:
            raise ServerFailed(
                f"{server.url}: the output node {slots.output} gave {len(refs)} images for one "
                "prompt, where one is needed (name the empty-latent node with --size-node so "
                "its batch_size is set to 1).")
        write_bytes_atomic(target, _as_png(client.fetch_file(server, refs[0])))
        return target

    with _comfy.Progress(len(jobs), desc="generate (ComfyUI)") as bar:
        client.run_all(list(jobs), run_one, lambda *_: bar.update(1), what="images")


def _as_png(raw: bytes) -> bytes:
    """The server's file if it is a PNG (its workflow metadata kept), else converted."""
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        return raw
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()
