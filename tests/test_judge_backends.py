"""The judge's two backends: a local VLM (tiny Qwen2-VL and Idefics3 built offline, a tiny
causal LM for text-only use) and an OpenAI-compatible client, tested against a real
``transformers serve`` of the tiny Qwen2-VL and against stdlib HTTP servers that misbehave."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from comfy_stub import InterruptProcessingException
from launch import free_port, launch_env
from PIL import Image
from science_t2i.nodes import lmm
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.lmm import LMMError, LocalBackend, OpenAIBackend, backend_from_spec
from science_t2i.nodes.lmm import local as jb
from science_t2i.nodes.lmm.base import check_parts
from tiny_llm import WORDS, build_tiny_llm
from tiny_vlm import QWEN_SPECIALS, build_tiny_idefics3, build_tiny_qwen2_vl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYSTEM = "You judge scientific realism."


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {"qwen2_vl": build_tiny_qwen2_vl(root / "tiny-qwen2-vl"),
            "idefics3": build_tiny_idefics3(root / "tiny-idefics3")}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    flat = Image.new("RGB", (64, 48), (0, 90, 255))
    return noise, flat


def judge_parts(first, second):
    return ["Image-1:", first, "Image-2:", second, "Prompt: an unripe tomato on a table."]


def spy_generate(backend, monkeypatch):
    """Record what reaches model.generate (and still run it)."""
    loaded = backend.load()
    calls = []
    real = loaded.model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(loaded.model, "generate", generate)
    return loaded, calls


# ----------------------------------------------------------------------------- local backend

def test_local_qwen2_vl_from_models_folder(models_dir, vlms, images, monkeypatch):
    shutil.copytree(vlms["qwen2_vl"], models_dir / "vlm" / "tiny-qwen2-vl")
    assert lmm.list_vlms() == ["tiny-qwen2-vl"]
    backend = backend_from_spec("local:tiny-qwen2-vl")
    assert isinstance(backend, LocalBackend) and backend.name == "local:tiny-qwen2-vl"
    assert backend.source == str((models_dir / "vlm" / "tiny-qwen2-vl").resolve())
    loaded, calls = spy_generate(backend, monkeypatch)
    assert loaded.multimodal and loaded.model_type == "qwen2_vl"

    noise, flat = images
    out = backend.generate(judge_parts(noise, flat), system=SYSTEM, max_new_tokens=12)
    assert isinstance(out, str) and out
    # greedy: the same answer again; the images reach the model: swapping them changes it
    assert backend.generate(judge_parts(noise, flat), system=SYSTEM, max_new_tokens=12) == out
    assert backend.generate(judge_parts(flat, noise), system=SYSTEM, max_new_tokens=12) != out

    kwargs = calls[0]
    assert kwargs["do_sample"] is False and kwargs["max_new_tokens"] == 12
    tok = loaded.processor.tokenizer
    prompt = tok.decode(kwargs["input_ids"][0])
    # Qwen2-VL's image processor with max 32*32 pixels, 8 px patches merged 2x2:
    # 64x64 -> 32x32 -> 4x4 patches -> 4 tokens; 64x48 -> 16x32 -> 2x4 patches -> 2 tokens
    pad = "<|image_pad|>"
    assert (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nImage-1:"
            f"<|vision_start|>{pad * 4}<|vision_end|>Image-2:<|vision_start|>{pad * 2}"
            "<|vision_end|>Prompt: an unripe tomato on a table.<|im_end|>\n"
            "<|im_start|>assistant\n") == prompt
    assert kwargs["image_grid_thw"].tolist() == [[1, 4, 4], [1, 2, 4]]
    # only the new tokens are decoded
    assert "Prompt" not in out and "assistant" not in out


def test_local_idefics3_directory_path(vlms, images, monkeypatch):
    backend = backend_from_spec(f"local:{vlms['idefics3']}")
    assert backend.name == "local:tiny-idefics3"
    loaded, calls = spy_generate(backend, monkeypatch)
    noise, flat = images
    out = backend.generate(judge_parts(noise, flat), system=SYSTEM, max_new_tokens=10)
    assert isinstance(out, str) and out
    assert backend.generate(judge_parts(noise, flat), system=SYSTEM, max_new_tokens=10) == out
    prompt = loaded.processor.tokenizer.decode(calls[0]["input_ids"][0])
    assert prompt.startswith(f"<|begin_of_text|>System: {SYSTEM}<end_of_utterance>\nUser: "
                             "Image-1:<fake_token_around_image><row_1_col_1>")
    # each image: 2x2 tiles of 32 px + the global view, 4 tokens each
    assert prompt.count("<image>") == 2 * 5 * 4 and prompt.count("<global-img>") == 2
    assert prompt.index("Image-2:") < prompt.index("Prompt: an unripe")
    assert prompt.endswith("<end_of_utterance>\nAssistant:")
    assert tuple(calls[0]["pixel_values"].shape) == (1, 10, 3, 32, 32)


def test_local_inside_comfyui_model_management_and_cancel(comfy, vlms, images, monkeypatch):
    shutil.copytree(vlms["qwen2_vl"], comfy.models_dir / "vlm" / "tiny-qwen2-vl")
    assert lmm.list_vlms() == ["tiny-qwen2-vl"]  # the folder ComfyUI registered
    backend = LocalBackend("tiny-qwen2-vl")
    noise, flat = images
    assert backend.generate(judge_parts(noise, flat), max_new_tokens=4)
    assert [type(h).__name__ for h in comfy.loaded] == ["ModelPatcher"]  # loaded through it
    # Cancel is checked before the call and at every new token
    checks = []

    def interrupted():
        checks.append(1)
        if len(checks) == 3:
            raise InterruptProcessingException()

    monkeypatch.setattr(jb._comfy.model_management, "throw_exception_if_processing_interrupted",
                        interrupted)
    with pytest.raises(InterruptProcessingException):
        backend.generate(judge_parts(noise, flat), max_new_tokens=8)
    assert len(checks) == 3


def test_local_model_not_found(models_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vlm_dir = models_dir / "vlm"
    with pytest.raises(ScienceT2IError) as err:
        LocalBackend("no-such-judge")
    msg = str(err.value)
    assert "'no-such-judge' not found" in msg and str(vlm_dir) in msg
    assert f"hf download Qwen/Qwen2.5-VL-3B-Instruct --local-dir {vlm_dir}" in msg
    # a Hub id, offline and not cached: the command that fetches exactly it
    with pytest.raises(ScienceT2IError) as err:
        backend_from_spec("local:someorg/no-such-vlm")
    msg = str(err.value)
    assert f"hf download someorg/no-such-vlm --local-dir {vlm_dir / 'no-such-vlm'}" in msg
    assert "HF_HUB_OFFLINE" in msg and "'local:no-such-vlm'" in msg
    # a folder without config.json
    (vlm_dir / "half").mkdir(parents=True)
    with pytest.raises(ScienceT2IError, match="no config.json"):
        LocalBackend("half")


def test_local_hub_id_found_in_models_folder(models_dir, vlms, monkeypatch):
    """A Hub id resolves to models/vlm/<repo name>, where the download command puts it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(vlms["idefics3"], models_dir / "vlm" / "Idefics3-tiny")
    backend = LocalBackend("HuggingFaceM4/Idefics3-tiny")
    assert backend.is_local and backend.name == "local:Idefics3-tiny"


def test_text_only_causal_lm(models_dir, images, monkeypatch):
    # an instruction model with a chat template, and a base model without one
    chat = build_tiny_llm(models_dir / "vlm" / "tiny-chat-llm", words=WORDS)
    (chat / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] }} {% endfor %}", encoding="utf-8")
    build_tiny_llm(models_dir / "vlm" / "tiny-base-llm", words=WORDS)

    backend = backend_from_spec("local:tiny-chat-llm")
    loaded, calls = spy_generate(backend, monkeypatch)
    assert not loaded.multimodal and loaded.model_type == "gpt2"
    out = backend.generate(["a green tomato", "on the table"], system="the red rose",
                           max_new_tokens=6)
    assert isinstance(out, str)
    assert backend.generate(["a green tomato", "on the table"], system="the red rose",
                            max_new_tokens=6) == out
    # the system text first, then the parts (one per line; the word-level tokenizer splits
    # on whitespace), through the model's own template
    prompt = loaded.processor.decode(calls[0]["input_ids"][0])
    assert prompt == "the red rose a green tomato on the table"
    assert calls[0]["do_sample"] is False

    base = LocalBackend("tiny-base-llm")
    assert isinstance(base.generate(["a ripe banana"], max_new_tokens=4), str)

    with pytest.raises(ScienceT2IError) as err:
        backend.generate(["Image-1:", images[0], "Prompt: a tomato"])
    msg = str(err.value)
    assert "text-only" in msg and "cannot look at images" in msg and "gpt2" in msg


def test_bad_parts_and_specs():
    with pytest.raises(ScienceT2IError, match="no input"):
        check_parts([])
    with pytest.raises(ScienceT2IError, match="part 1 is a ndarray"):
        check_parts(["text", np.zeros((4, 4, 3))])
    with pytest.raises(ScienceT2IError, match="needs a base URL"):
        backend_from_spec("openai:gpt-4o")
    with pytest.raises(ScienceT2IError, match="unknown model 'gpt-4o'"):
        backend_from_spec("gpt-4o", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ScienceT2IError, match="not an http"):
        backend_from_spec("openai:m", base_url="127.0.0.1:8000/v1")
    remote = backend_from_spec("openai:m", base_url="http://127.0.0.1:8000/v1/", retries=5,
                               timeout=7)
    assert isinstance(remote, OpenAIBackend)
    assert remote.name == "openai:m@http://127.0.0.1:8000/v1"
    assert remote.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert (remote.retries, remote.timeout) == (5, 7.0)


# ----------------------------------------------------------------------------- real server

@pytest.fixture(scope="module")
def vlm_server(vlms, tmp_path_factory):
    """``transformers serve`` of the tiny Qwen2-VL directory on a free port, CPU only."""
    model = str(vlms["qwen2_vl"])
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", model,
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                env=launch_env(), start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({proc.returncode}):\n"
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not answer /health within 120 s:\n"
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield model, base_url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_openai_backend_against_transformers_serve(vlm_server, vlms, images):
    model, base_url = vlm_server
    remote = OpenAIBackend(model, base_url, timeout=60, retries=0)

    def ask(parts):
        # transformers serve reads Qwen replies with its response parser on the raw decode,
        # which keeps special tokens; a random model emits them mid-reply (a trained one
        # does not), so they are dropped here before comparing with the local decode
        text = remote.generate(parts, system=SYSTEM, max_new_tokens=12)
        for special in QWEN_SPECIALS:
            text = text.replace(special, "")
        return text.strip()

    noise, flat = images
    out = ask(judge_parts(noise, flat))
    assert isinstance(out, str) and out
    # the server builds the same prompt from the same images (sent as PNG data URLs) and
    # decodes greedily at temperature 0: the local backend's answer, character for character
    local = LocalBackend(str(vlms["qwen2_vl"]))
    assert local.generate(judge_parts(noise, flat), system=SYSTEM, max_new_tokens=12) == out
    swapped = ask(judge_parts(flat, noise))
    assert swapped != out
    assert swapped == local.generate(judge_parts(flat, noise), system=SYSTEM,
                                     max_new_tokens=12)


def test_openai_http_error_from_transformers_serve(vlm_server):
    _, base_url = vlm_server
    remote = OpenAIBackend("not-the-served-model", base_url, timeout=30, retries=3)
    sleeps = []
    remote._sleep = sleeps.append
    with pytest.raises(LMMError) as err:
        remote.generate(["Prompt: a tomato"])
    msg = str(err.value)
    assert f"{base_url}/chat/completions" in msg and "not-the-served-model" in msg
    assert "on the first try" in msg and "HTTP 400" in msg
    assert "Server is pinned to" in msg  # the server's own words, from its body
    assert err.value.transient is False and sleeps == []  # a 4xx is not retried


def _rubric_run(tmp_path):
    """One record with its rubric and RUN/{ip,ep,sp}/0_0.png."""
    from science_t2i.training.core.datasets import write_jsonl_dataset
    write_jsonl_dataset([{"implicit_prompt": ["an unripe apple"], "law": "RI",
                          "category": "biology", "scene_scoring": "an apple",
                          "real_scoring": "the apple is green"}], tmp_path / "ds")
    for i, kind in enumerate(("ip", "ep", "sp")):
        (tmp_path / "run" / kind).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40 * i, 120, 30)).save(tmp_path / "run" / kind / "0_0.png")
    return tmp_path / "ds", tmp_path / "run"


def test_the_rubric_judge_through_transformers_serve(vlm_server, tmp_path):
    """The benchmark's judge against a real OpenAI-compatible server: every image asked once
    (two at a time), each reply judged or counted as unreadable (a tiny random model's
    replies are noise), all cached."""
    from science_t2i.training.core.datasets import load_records
    from science_t2i.training.eval.judge_cache import JudgeCache
    from science_t2i.training.eval.rubric_runs import judge_run
    model, base_url = vlm_server
    ds, run = _rubric_run(tmp_path)
    records = load_records(ds, None, require=("implicit_prompt",))
    cache = JudgeCache(tmp_path / "cache.jsonl")
    result = judge_run(run, records, OpenAIBackend(model, base_url, timeout=120, retries=1),
                       cache=cache, concurrency=2)
    counted = sum(k["judged"] + k["failures"] for k in result["kinds"].values())
    assert counted == 3 and len(cache) == 3
    assert all(r.get("score") is not None or "unreadable reply" in r["error"]
               for r in result["rows"])


def test_bench_judging_killed_then_resumed_loses_nothing(vlm_server, tmp_path):
    """SIGKILL while the judge is being asked, then the same command again: every reply
    that arrived before the kill is kept, none is asked twice, the report comes out."""
    model, base_url = vlm_server
    ds, run = _rubric_run(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "science_t2i.training.cli", "bench", "--dataset", str(ds),
           "--images", str(run), "--no-sciscore", "--judge", f"openai:{model}",
           "--base-url", base_url, "--concurrency", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=launch_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    cache = out / "rubric_cache.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if cache.is_file() and cache.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = [json.loads(line)["key"] for line in cache.read_text().splitlines() if line]
    print(f"\nreplies cached before the kill: {len(before)} of 3")
    assert 1 <= len(before) < 3   # killed mid-run (each tiny-model reply takes ~1 s)
    done = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = [json.loads(line)["key"] for line in cache.read_text().splitlines() if line]
    assert after[:len(before)] == before and len(after) == len(set(after)) == 3
    report = json.loads((out / "bench.json").read_text())["rubric"]
    assert sum(k["judged"] + k["failures"] for k in report["kinds"].values()) == 3


# ----------------------------------------------------------------------------- stub servers

class StubState:
    def __init__(self):
        self.script: list[dict] = []   # one entry per request: status, body, headers, hang
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.lock = threading.Lock()


def make_handler(state: StubState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            with state.lock:
                state.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": json.loads(body)})
                step = state.script.pop(0) if state.script else {"status": 500}
            if step.get("hang"):  # accept, read, never answer (until the test ends)
                state.release.wait(30)
                return
            payload = step.get("body", b"")
            if not isinstance(payload, bytes):
                payload = json.dumps(payload).encode()
            try:
                self.send_response(step["status"])
                for key, value in step.get("headers", {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up
                pass

    return Handler


@pytest.fixture(scope="module")
def stub_server():
    state = StubState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    state.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def stub(stub_server):
    state, base_url = stub_server
    state.script.clear()
    state.requests.clear()
    state.release.clear()
    yield state, base_url
    state.release.set()  # let hanging handlers finish


def reply(text):
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]}


def test_openai_timeouts_are_retried_then_fail(stub):
    state, base_url = stub
    state.script += [{"hang": True}] * 3
    remote = OpenAIBackend("judge-m", base_url, timeout=0.3, retries=2, backoff=0.01)
    sleeps = []
    remote._sleep = sleeps.append
    start = time.monotonic()
    with pytest.raises(LMMError) as err:
        remote.generate(["Prompt: a tomato"])
    assert time.monotonic() - start < 5
    assert len(state.requests) == 3  # three real tries reached the server
    assert sleeps == [0.01, 0.02]    # exponential backoff between them
    msg = str(err.value)
    assert "after 3 tries" in msg and "timeout" in msg and "judge-m" in msg
    assert f"{base_url}/chat/completions" in msg
    assert err.value.transient is True


@pytest.mark.parametrize("status,headers,expected_sleep", [
    (503, {}, 0.5),                       # our backoff
    (429, {"Retry-After": "2"}, 2.0),     # the server's wish
])
def test_openai_transient_error_then_success(stub, images, monkeypatch, status, headers,
                                             expected_sleep):
    state, base_url = stub
    state.script += [{"status": status, "body": b"overloaded, try later", "headers": headers},
                     {"status": 200, "body": reply("  Image-1 is more realistic.  ")}]
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    remote = OpenAIBackend("judge-m", base_url, api_key_env="JUDGE_TEST_KEY", timeout=5,
                           retries=3, backoff=0.5, seed=7, max_image_side=32)
    sleeps = []
    remote._sleep = sleeps.append
    big = Image.new("RGBA", (128, 64), (255, 0, 0, 255))
    out = remote.generate(["Image-1:", big, "Image-2:", images[1], "Prompt: x"],
                          system=SYSTEM, max_new_tokens=40)
    assert out == "Image-1 is more realistic."
    assert sleeps == [expected_sleep] and len(state.requests) == 2

    request = state.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-secret-123"
    body = request["body"]
    assert (body["model"], body["temperature"], body["seed"], body["max_tokens"]) == (
        "judge-m", 0.0, 7, 40)
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    content = body["messages"][1]["content"]
    assert body["messages"][1]["role"] == "user"
    assert [c["type"] for c in content] == ["text", "image_url", "text", "image_url", "text"]
    assert [c["text"] for c in content if c["type"] == "text"] == [
        "Image-1:", "Image-2:", "Prompt: x"]
    decoded = []
    for c in content:
        if c["type"] == "image_url":
            head, data = c["image_url"]["url"].split(",", 1)
            assert head == "data:image/png;base64"
            decoded.append(Image.open(io.BytesIO(base64.b64decode(data))))
    # long side <= 32, aspect kept, RGB, LANCZOS as Pillow does it
    assert [(im.format, im.mode, im.size) for im in decoded] == [
        ("PNG", "RGB", (32, 16)), ("PNG", "RGB", (32, 24))]
    expected = images[1].resize((32, 24), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(decoded[1]), np.asarray(expected))


def test_openai_client_error_fails_at_once_without_showing_the_key(stub, monkeypatch):
    state, base_url = stub
    state.script += [{"status": 401, "body": {"error": {"message": "invalid api key"}}},
                     {"status": 200, "body": reply("ok")}]
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    remote = OpenAIBackend("judge-m", base_url, api_key_env="JUDGE_TEST_KEY", retries=3,
                           backoff=0.01)
    sleeps = []
    remote._sleep = sleeps.append
    with pytest.raises(LMMError) as err:
        remote.generate(["Prompt: a tomato"])
    msg = str(err.value)
    assert "HTTP 401" in msg and "invalid api key" in msg and "JUDGE_TEST_KEY" in msg
    assert "sk-secret-123" not in msg and "on the first try" in msg
    assert err.value.transient is False and sleeps == [] and len(state.requests) == 1
    # with the variable unset, no Authorization header at all (local servers need none)
    monkeypatch.delenv("JUDGE_TEST_KEY")
    assert remote.generate(["Prompt: a tomato"]) == "ok"
    assert "Authorization" not in state.requests[-1]["headers"]


def test_openai_unusable_replies(stub):
    state, base_url = stub
    no_content = {"choices": [{"message": {"role": "assistant", "content": None,
                                           "refusal": "I cannot judge this."}}]}
    state.script += [{"status": 200, "body": no_content},
                     {"status": 200, "body": b"<html>proxy login</html>"},
                     {"status": 200, "body": {"error": "model is loading"}}]
    remote = OpenAIBackend("judge-m", base_url, retries=2, backoff=0.01)
    with pytest.raises(LMMError) as err:
        remote.generate(["Prompt: a tomato"])
    assert "no choices[0].message.content" in str(err.value)
    assert "I cannot judge this." in str(err.value) and err.value.transient is False
    with pytest.raises(LMMError, match="not JSON.*proxy login"):
        remote.generate(["Prompt: a tomato"])
    with pytest.raises(LMMError, match="model is loading"):
        remote.generate(["Prompt: a tomato"])
    assert len(state.requests) == 3  # a reply that arrived is not asked for again


def test_openai_connection_refused_is_retried():
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    remote = OpenAIBackend("judge-m", base_url, timeout=2, retries=1, backoff=0.01)
    sleeps = []
    remote._sleep = sleeps.append
    with pytest.raises(LMMError) as err:
        remote.generate(["Prompt: a tomato"])
    assert "after 2 tries" in str(err.value) and "cannot connect" in str(err.value)
    assert err.value.transient is True and sleeps == [0.01]


# ----------------------------------------------------------------------------- end to end

@pytest.fixture
def short_replies(monkeypatch):
    """Random tiny models rarely stop on their own: cap every protocol's reply length."""
    from science_t2i.nodes.judges import protocols as judge
    for name in ("PAIR_TOKENS", "QUIZ_TOKENS", "RUBRIC_TOKENS", "GRADE_TOKENS"):
        monkeypatch.setattr(judge, name, 6)


def _scigen_bench(root):
    records = [{"id": f"q{i}", "original_question": f"A block of {i + 1} kg on a slope.",
                "image_type": "Mechanics", "subject": "Physics",
                "multimodal_question": "Which force?\nA. gravity\nB. friction", "answer": "A"}
               for i in range(2)]
    data = root / "records.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    gen = root / "gen"
    gen.mkdir()
    for i in range(2):
        Image.new("RGB", (48, 40), (40 * i, 120, 200)).save(gen / f"q{i}.png")
    return data, gen


@pytest.mark.parametrize("backend", ["local", "openai"])
def test_eval_scigen_end_to_end_through_both_backends(backend, vlm_server, vlms, tmp_path,
                                                      short_replies, capsys):
    from science_t2i.training.cli import main
    data, gen = _scigen_bench(tmp_path)
    model, base_url = vlm_server
    judge = ["--judge", f"local:{vlms['qwen2_vl']}"] if backend == "local" else \
        ["--judge", f"openai:{model}", "--base-url", base_url]
    out = tmp_path / "out"
    args = ["eval-scigen", "--records", str(data), "--images", f"tiny={gen}", *judge,
            "--metrics", "quiz,judge", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "scigen_eval.json").read_text())
    overall = report["sets"]["tiny"]["overall"]
    # a random model answers nonsense: every reply is read, counted and reported, none crashes
    assert overall["quizzes"] == 2 and overall["judge_error"] == 0
    assert overall["quiz_unparsed"] + overall["quizzes_correct"] <= 2
    assert report["judge"].startswith(backend)
    assert report["cache"]["replies"] == 4                   # 2 quizzes + 2 rubrics
    capsys.readouterr()
    assert main(args) == 0                                   # resumed: all from the cache
    assert json.loads((out / "scigen_eval.json").read_text())["cache"]["reused"] == 4


@pytest.mark.parametrize("backend", ["local", "openai"])
def test_eval_reward_judge_end_to_end_through_both_backends(backend, vlm_server, vlms,
                                                            tmp_path, short_replies, capsys):
    from science_t2i.training.cli import main
    from science_t2i.training.core.datasets import write_jsonl_dataset
    rows = [{"implicit_prompt": "an unripe apple", "explicit_image": Image.new(
                "RGB", (32, 32), (0, 200, 0)), "superficial_image": Image.new(
                "RGB", (32, 32), (200, 0, 0)), "category": "biology", "law": "RI"}] * 2
    write_jsonl_dataset(rows, tmp_path / "ds")
    model, base_url = vlm_server
    judge = ["--judge", f"local:{vlms['qwen2_vl']}"] if backend == "local" else \
        ["--judge", f"openai:{model}", "--base-url", base_url]
    assert main(["eval-reward", "--dataset", str(tmp_path / "ds"), *judge, "--judge-only",
                 "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "reward_accuracy.json").read_text())
    [table] = data["models"].values()
    assert table["overall"]["total"] == 2 and not table["failures"]
    # each record asked in both orders; unreadable replies are listed, never guessed
    assert len(table["unparseable"]) <= 4
    assert 0.0 <= table["overall"]["accuracy"] <= 1.0


@pytest.mark.parametrize("backend", ["local", "openai"])
def test_synth_data_end_to_end_through_both_backends(backend, vlm_server, vlms, tmp_path,
                                                     short_replies, capsys):
    """synth-data on a folder of images with a real judge: every image is asked, verdicts
    are counted (a random model mostly answers nonsense, which drops its image with the
    reason), what passes is exported, and a re-run asks nothing again."""
    from science_t2i.training.cli import main
    data, gen = _scigen_bench(tmp_path)
    model, base_url = vlm_server
    judge = ["--judge", f"local:{vlms['qwen2_vl']}"] if backend == "local" else \
        ["--judge", f"openai:{model}", "--base-url", base_url]
    out = tmp_path / "synth"
    args = ["synth-data", "--records", str(data), "--images", str(gen), *judge,
            "--workers", "2", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "synth_report.json").read_text())
    assert report["generated"] == 2 and report["rows"] == report["kept"]   # one question each
    dropped = {d["id"]: d["reason"] for d in report["dropped"]}
    assert len(dropped) == 2 - report["kept"]
    assert all(r.startswith("inverse quiz: 0 of 1") for r in dropped.values())
    if report["kept"]:
        from datasets import load_from_disk
        assert len(load_from_disk(str(out / "dataset"))) == report["rows"]
    else:
        assert not (out / "dataset").exists()
    replies = len((out / "judge_cache.jsonl").read_text().splitlines())
    assert replies == 2
    capsys.readouterr()
    assert main(args) == 0                                   # resumed: all from the cache
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) == replies
