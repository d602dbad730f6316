"""A fake ComfyUI HTTP server on 127.0.0.1 answering /prompt, /history/<id> and /view with the
response shapes of ComfyUI's server.py / execution.py, for testing the rollout client."""
from __future__ import annotations

import io
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np


def _titled(graph: dict, title: str) -> str | None:
    for node_id, node in graph.items():
        if node.get("_meta", {}).get("title") == title:
            return node_id
    return None


def _png(value: float, size: int = 16, mask: bool = False, score: float | None = None) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo
    if mask:  # left half white: what MaskToImage -> SaveImage writes for a box mask
        arr = np.zeros((size, size, 3), np.uint8)
        arr[:, : size // 2] = 255
    else:
        arr = np.full((size, size, 3), int(round(value * 255)), np.uint8)
    info = PngInfo()
    if score is not None:  # what Save Scored Images writes
        info.add_text("sciscore", json.dumps({"score": score, "rank": 0}))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


class FakeComfy:
    """``mode``: "ok"; "reject" (POST /prompt answers 400 with node_errors); "partial" (200
    with a prompt id and node_errors, as ComfyUI answers when only some outputs are valid,
    queueing those); "exec_error"
    (history reports an execution error); "vanish" (accepts one prompt, then stops listening)."""

    def __init__(self, mode: str = "ok", polls_before_done: int = 1):
        self.mode = mode
        self.polls_before_done = polls_before_done
        self.received: list[dict] = []
        self.deleted: list[str] = []
        self.jobs: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _json(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/queue":   # {"delete": [prompt ids]}
                    with fake.lock:
                        for pid in data.get("delete", []):
                            fake.jobs.pop(pid, None)
                            fake.deleted.append(pid)
                    return self._json({})
                if self.path != "/prompt":
                    return self._json({}, 404)
                fake._post_prompt(self, data)

            def do_GET(self):
                url = urlparse(self.path)
                if url.path.startswith("/history/"):
                    return self._json(fake._history(url.path.split("/", 2)[2]))
                if url.path == "/view":
                    name = parse_qs(url.query).get("filename", [""])[0]
                    if name not in fake.files:
                        self.send_response(404)
                        self.end_headers()
                        return
                    body = fake.files[name]
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self._json({}, 404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        try:
            self.httpd.shutdown()
        finally:
            self.httpd.server_close()

    # --- ComfyUI behaviour ---------------------------------------------------------------
    def _post_prompt(self, handler, data):
        graph = data["prompt"]
        with self.lock:
            self.received.append(graph)
        if self.mode == "reject":
            lora = _titled(graph, "Rollout LoRA") or "4"
            return handler._json({
                "error": {"type": "prompt_outputs_failed_validation",
                          "message": "Prompt outputs failed validation", "details": "",
                          "extra_info": {}},
                "node_errors": {lora: {
                    "errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                "details": "lora_name: 'missing.safetensors' not in []",
                                "extra_info": {}}],
                    "dependent_outputs": ["10"], "class_type": "ScienceT2I_LoraLoader"}}},
                status=400)
        prompt_id = str(uuid.uuid4())
        with self.lock:
            number = len(self.jobs)
            self.jobs[prompt_id] = {"graph": graph, "polls": 0}
        errors = {}
        if self.mode == "partial":
            mask = _titled(graph, "Rollout subject mask") or "20"
            errors = {mask: {"errors": [{"type": "required_input_missing",
                                         "message": "Required input is missing",
                                         "details": "image", "extra_info": {}}],
                             "dependent_outputs": ["21"], "class_type": "SaveImage"}}
        handler._json({"prompt_id": prompt_id, "number": number, "node_errors": errors})
        if self.mode == "vanish":
            threading.Thread(target=self.stop, daemon=True).start()

    def _history(self, prompt_id):
        with self.lock:
            job = self.jobs.get(prompt_id)
            if job is None:
                return {}
            job["polls"] += 1
            if job["polls"] <= self.polls_before_done:
                return {}  # still queued or running: ComfyUI has no history entry yet
        graph = job["graph"]
        if self.mode == "exec_error":
            return {prompt_id: {"prompt": [0, prompt_id, graph, {}, []], "outputs": {},
                                "status": {"status_str": "error", "completed": False, "messages": [
                                    ["execution_start", {"prompt_id": prompt_id}],
                                    ["execution_error", {"prompt_id": prompt_id, "node_id": "8",
                                                         "node_type": "KSampler",
                                                         "exception_message": "CUDA out of memory"}]]},
                                "meta": {}}}
        if _titled(graph, "Rollout sampler") is None:
            return {prompt_id: self._any_graph(prompt_id, graph)}
        seed = graph[_titled(graph, "Rollout sampler")]["inputs"]["seed"]
        k = graph[_titled(graph, "Rollout latent")]["inputs"]["batch_size"]
        outputs = {}
        images, masks = [], []
        for i in range(k):
            name = f"rollout_{prompt_id[:8]}_{i:05d}_.png"
            scored = _titled(graph, "Rollout SciScore") is not None
            self.files[name] = _png(((seed + i) % 10) / 10,
                                    score=((seed + i) % 10) / 10 if scored else None)
            images.append({"filename": name, "subfolder": "", "type": "output"})
            mname = f"mask_{prompt_id[:8]}_{i:05d}_.png"
            self.files[mname] = _png(0, mask=True)
            masks.append({"filename": mname, "subfolder": "", "type": "output"})
        outputs[_titled(graph, "Rollout images")] = {"images": images}
        if _titled(graph, "Rollout masks"):
            outputs[_titled(graph, "Rollout masks")] = {"images": masks}
        return {prompt_id: {"prompt": [0, prompt_id, graph, {}, [_titled(graph, "Rollout images")]],
                            "outputs": outputs,
                            "status": {"status_str": "success", "completed": True,
                                       "messages": [["execution_start", {}],
                                                    ["execution_success", {}]]},
                            "meta": {}}}

    def _any_graph(self, prompt_id, graph):
        """Any other graph: each SaveImage node saves batch_size images (from the node with
        width/height) whose grey level is ``image_value(text, seed)`` of the graph's first text
        and seed inputs, at the graph's width."""
        inputs = [graph[n]["inputs"] for n in sorted(graph, key=int)]
        text = next(i["text"] for i in inputs if isinstance(i.get("text"), str))
        seed = next(i.get("seed", i.get("noise_seed")) for i in inputs
                    if "seed" in i or "noise_seed" in i)
        latent = next((i for i in inputs if "width" in i and "height" in i), {})
        outputs = {}
        for node_id, node in graph.items():
            if node["class_type"] != "SaveImage":
                continue
            refs = []
            for i in range(latent.get("batch_size", 1)):
                name = f"bench_{prompt_id[:8]}_{node_id}_{i:05d}_.png"
                self.files[name] = _png(image_value(text, seed), size=latent.get("width", 16))
                refs.append({"filename": name, "subfolder": "", "type": "output"})
            outputs[node_id] = {"images": refs}
        return {"prompt": [0, prompt_id, graph, {}, list(outputs)], "outputs": outputs,
                "status": {"status_str": "success", "completed": True,
                           "messages": [["execution_success", {}]]}, "meta": {}}


def image_value(text: str, seed: int) -> float:
    """The grey level FakeComfy draws for a prompt and seed (multiples of 1/255)."""
    import hashlib
    digest = hashlib.sha256(f"{text}|{seed}".encode()).digest()
    return digest[0] / 255
