"""A client for ComfyUI servers: post an API-format graph, poll its history, fetch the images,
and share a list of jobs among several servers.

One thread per server pulls jobs from a shared queue, so servers work in parallel and a fast
server takes more of the work. A server that refuses a graph, errors while running it, times
out or disappears is dropped for the rest of the call and its job goes back into the queue for
the others; the call fails only when no server is left. Used by the stage-2 rollouts and by
``science-t2i bench``'s generation.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ...nodes.errors import ScienceT2IError

log = logging.getLogger("science_t2i.comfy")


@dataclass
class ComfyServer:
    """A ComfyUI server and the folder its LoRA loader reads (its models/loras, mounted here,
    or a folder shared by all servers), where a LoRA is to be published to it."""
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


class ServerFailed(Exception):
    """This server cannot serve the job (the job goes back into the queue)."""


def load_api_workflow(path: str | Path) -> dict[str, Any]:
    """A workflow file, read as ``validate-workflow`` reads workflows; API format only."""
    from .workflow_check import load_workflow
    graph = load_workflow(path)
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n
                                              for n in graph.values()):
        raise ScienceT2IError(f"{path} is not an API-format ComfyUI workflow (node id -> "
                              "{class_type, inputs}); export it with 'Save (API Format)'.")
    return graph


@dataclass
class _Jobs:
    pending: "queue.Queue[int]"
    total: int
    results: dict[int, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ComfyClient:
    """HTTP to one or more ComfyUI servers (``/prompt``, ``/history``, ``/view``, ``/queue``)."""

    def __init__(self, servers: Sequence[ComfyServer | str], *, poll_interval: float = 0.5,
                 timeout: float = 1800.0, request_timeout: float = 30.0):
        if not servers:
            raise ScienceT2IError("no ComfyUI servers given; pass --comfy http://HOST:PORT.")
        self.servers = [s if isinstance(s, ComfyServer) else ComfyServer.parse(s) for s in servers]
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.client_id = uuid.uuid4().hex

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

    def submit(self, server: ComfyServer, graph: dict) -> str:
        """Queue the graph; its prompt id. A graph the server refuses, even in part, fails."""
        status, raw = self._http(server, "/prompt", {"prompt": graph, "client_id": self.client_id})
        try:
            reply = json.loads(raw or b"{}")
        except ValueError:
            reply = {}
        if status != 200 or "prompt_id" not in reply:
            raise ServerFailed(f"{server.url} rejected the graph (HTTP {status}): "
                               f"{describe_error(reply)}")
        if reply.get("node_errors"):
            # ComfyUI queues the graph's valid outputs and answers 200 with the invalid nodes
            # listed: the graph would run without them and fail later elsewhere
            self.forget(server, reply["prompt_id"])
            raise ServerFailed(f"{server.url} accepted the graph only in part (HTTP 200 with "
                               f"node errors): {describe_error(reply)}")
        return reply["prompt_id"]

    def forget(self, server: ComfyServer, prompt_id: str) -> None:
        """Take a queued prompt off the server's queue (best effort)."""
        try:
            self._http(server, "/queue", {"delete": [prompt_id]})
        except ServerFailed:
            pass

    def wait(self, server: ComfyServer, prompt_id: str) -> dict:
        """The finished prompt's outputs (node id -> {"images": [refs], ...})."""
        deadline = time.monotonic() + self.timeout
        pause = min(0.02, self.poll_interval)
        while time.monotonic() < deadline:
            status, raw = self._http(server, f"/history/{prompt_id}")
            if status != 200:
                raise ServerFailed(f"{server.url} answered HTTP {status} for its history")
            entry = json.loads(raw or b"{}").get(prompt_id)
            if entry:
                state = entry.get("status") or {}
                if state.get("status_str") == "error":
                    raise ServerFailed(f"{server.url} failed running the graph: "
                                       f"{execution_error(state)}")
                if state.get("completed", True):
                    return entry.get("outputs", {})
            time.sleep(pause)   # short jobs are seen at once, long ones cost few requests
            pause = min(pause * 2, self.poll_interval)
        raise ServerFailed(f"{server.url} did not finish within {self.timeout:.0f} s")

    def fetch_file(self, server: ComfyServer, ref: dict) -> bytes:
        """The bytes of an output file ({filename, subfolder, type}) as the server wrote it."""
        query = urllib.parse.urlencode({"filename": ref["filename"],
                                        "subfolder": ref.get("subfolder", ""),
                                        "type": ref.get("type", "output")})
        status, raw = self._http(server, f"/view?{query}")
        if status != 200:
            raise ServerFailed(f"{server.url} could not serve image {ref['filename']} "
                               f"(HTTP {status})")
        return raw

    def fetch_images(self, server: ComfyServer, refs: list[dict]) -> tuple[Any, list[dict]]:
        """The images of a history output as one IMAGE tensor, and their PNG text chunks."""
        import io

        import torch
        from PIL import Image

        from ...nodes.core import from_pil
        out, texts = [], []
        for ref in refs:
            img = Image.open(io.BytesIO(self.fetch_file(server, ref)))
            img.load()
            texts.append(dict(getattr(img, "text", {}) or {}))
            out.append(from_pil(img))
        return torch.cat(out), texts

    def run_all(self, jobs: Sequence[Any], run_one: Callable[[ComfyServer, Any], Any],
                on_done: Callable[[Any, Any], None] | None = None,
                what: str = "jobs") -> list[Any]:
        """``run_one(server, job)`` for every job on whichever server is free; results in job
        order. ``on_done(job, result)`` is called (from a worker thread, one at a time) as
        each job finishes."""
        state = _Jobs(queue.Queue(), len(jobs))
        for i in range(len(jobs)):
            state.pending.put(i)

        def worker(server: ComfyServer) -> None:
            while True:
                with state.lock:
                    if len(state.results) == state.total:
                        return
                try:
                    i = state.pending.get(timeout=0.05)
                except queue.Empty:
                    continue
                try:
                    result = run_one(server, jobs[i])
                except Exception as exc:  # this server's fault, not the job's: others retry it
                    reason = str(exc) if isinstance(exc, ServerFailed) else f"{server.url}: {exc!r}"
                    log.warning("dropping ComfyUI server: %s", reason)
                    with state.lock:
                        state.failures[server.url] = reason
                    state.pending.put(i)
                    return
                with state.lock:
                    state.results[i] = result
                    if on_done is not None:
                        on_done(jobs[i], result)

        threads = [threading.Thread(target=worker, args=(s,), daemon=True, name=f"comfy-{n}")
                   for n, s in enumerate(self.servers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(state.results) < len(jobs):
            details = "; ".join(state.failures.values()) or "no server answered"
            raise ScienceT2IError(
                f"every ComfyUI server failed ({len(state.results)} of {len(jobs)} {what} "
                f"done): {details}. Check that each server runs with this pack installed and "
                "has the models the workflow names.")
        return [state.results[i] for i in range(len(jobs))]


def nodes_titled(graph: dict, title: str) -> list[str]:
    """The ids of the nodes whose ``_meta.title`` is ``title``."""
    return [nid for nid, node in graph.items() if node.get("_meta", {}).get("title") == title]


def find_node(graph: dict, name: str, role: str) -> str:
    """The id of the node ``name`` names: its id, else its title (``_meta.title``), which
    must then be unique. ``role`` says what the node is for, in the error."""
    if name in graph:
        return name
    titled = nodes_titled(graph, name)
    if len(titled) == 1:
        return titled[0]
    nodes = ", ".join(f"{nid} ({n.get('class_type')}"
                      + (f", titled {n['_meta']['title']!r})" if n.get("_meta", {}).get("title")
                         else ")") for nid, n in graph.items())
    if titled:
        raise ScienceT2IError(f"{len(titled)} nodes are titled {name!r} ({', '.join(titled)}); "
                              f"name the {role} by its id instead.")
    raise ScienceT2IError(f"the workflow has no node {name!r} (id or title) for the {role}. "
                          f"Its nodes: {nodes}.")


def describe_error(reply: dict) -> str:
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


def execution_error(state: dict) -> str:
    for event, data in state.get("messages", []):
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_message', '').strip()}")
    return "execution error"
