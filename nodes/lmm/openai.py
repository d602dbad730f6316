"""A model behind any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM,
llama.cpp, Ollama, LM Studio, ``transformers serve``), with the standard library only:
images as PNG data URLs, temperature 0 and a fixed seed, retries with backoff on timeouts,
connection errors, HTTP 429 and 5xx."""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from .. import _comfy
from ..errors import ScienceT2IError
from .base import Endpoint, LMMBackend, LMMError, Part, check_parts, rgb

log = logging.getLogger("science_t2i")


def image_data_url(img: Image.Image, max_side: int | None = 1024) -> str:
    """A PNG data URL of ``img``, downscaled (LANCZOS) so its long side is <= ``max_side``."""
    img = rgb(img)
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Failure(Exception):
    """One failed try: what to say, and whether trying again may help."""

    def __init__(self, what: str, transient: bool, hint: str, retry_after: float | None = None):
        super().__init__(what)
        self.what, self.transient, self.hint, self.retry_after = what, transient, hint, \
            retry_after


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


class OpenAIBackend(LMMBackend):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url``: the API root, e.g. ``https://api.openai.com/v1`` or
    ``http://127.0.0.1:8000/v1`` (vLLM, llama.cpp, ``transformers serve``). The key is read
    from the environment variable ``api_key_env`` at each call; when it is unset no
    Authorization header is sent (local servers need none). ``retries``: how many times a
    call that timed out, could not connect or got HTTP 429/5xx is repeated, after waiting
    ``backoff * 2**k`` seconds (or the server's Retry-After, up to ``max_backoff``).
    """

    def __init__(self, model: str, base_url: str, *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120, retries: int = 3, temperature: float = 0.0,
                 seed: int | None = 0, max_image_side: int | None = 1024,
                 backoff: float = 1.0, max_backoff: float = 30.0):
        if not model or not str(model).strip():
            raise ScienceT2IError("no model named for the OpenAI-compatible judge: give the "
                                  "model id the server serves (e.g. 'openai:gpt-4o').")
        base = str(base_url or "").strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ScienceT2IError(
                f"judge base URL {base_url!r} is not an http(s) URL; give the API root, e.g. "
                "https://api.openai.com/v1 or http://127.0.0.1:8000/v1 for a local server.")
        if retries < 0 or timeout <= 0:
            raise ScienceT2IError(f"retries must be >= 0 and timeout > 0 (got retries={retries}"
                                  f", timeout={timeout}).")
        self.model = str(model).strip()
        self.base_url = base
        self.url = base + "/chat/completions"
        self.name = f"openai:{self.model}@{base}"
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.temperature = float(temperature)
        self.seed = seed
        self.max_image_side = max_image_side
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_spec(cls, model: str, endpoint: Endpoint) -> "OpenAIBackend":
        """``openai:MODEL`` at ``endpoint.base_url``."""
        if not endpoint.base_url or not str(endpoint.base_url).strip():
            raise ScienceT2IError(
                f"the model 'openai:{model}' needs a base URL: the API root of an "
                "OpenAI-compatible server, e.g. https://api.openai.com/v1, or "
                "http://127.0.0.1:8000/v1 for a local vLLM / llama.cpp / `transformers serve` "
                "server.")
        return cls(model, endpoint.base_url, api_key_env=endpoint.api_key_env,
                   timeout=endpoint.timeout, retries=endpoint.retries)

    # -------------------------------------------------------------- request
    def request_body(self, parts: Sequence[Part], *, system: str | None = None,
                     max_new_tokens: int = 512) -> dict:
        content = [{"type": "text", "text": p} if isinstance(p, str) else
                   {"type": "image_url",
                    "image_url": {"url": image_data_url(p, self.max_image_side)}}
                   for p in check_parts(parts)]
        messages: list[dict] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": self.temperature,
                                "max_tokens": int(max_new_tokens)}
        if self.seed is not None:
            body["seed"] = int(self.seed)
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "").strip() if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post_once(self, data: bytes) -> bytes:
        req = urllib.request.Request(self.url, data=data, headers=self._headers(),
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read().decode("utf-8", "replace")
            except OSError:  # the body could not be read either
                body = ""
            code = exc.code
            what = f"HTTP {code} {exc.reason}: {body[:300]!r}"
            if code == 429:
                raise _Failure(what, True, "the server is rate limiting: wait, lower the "
                               "request rate, or check the account's quota.",
                               _retry_after(exc.headers)) from exc
            if code >= 500:
                raise _Failure(what, True, "the server failed or is overloaded: check its "
                               "log and that it has finished loading the model.",
                               _retry_after(exc.headers)) from exc
            if code in (401, 403):
                hint = (f"check the API key in the environment variable {self.api_key_env}"
                        " (it is sent as a Bearer token when set).")
            elif code == 404:
                hint = (f"check the base URL ({self.base_url}: usually ending in /v1) and "
                        f"that the server serves the model {self.model!r}.")
            else:
                hint = (f"check the model name {self.model!r} (the one the server serves) "
                        "and that the server accepts images and these parameters.")
            raise _Failure(what, False, hint) from exc
        except TimeoutError as exc:
            raise _Failure(f"no answer within {self.timeout:g} s (timeout)", True,
                           "check that the server is up and not overloaded, or raise the "
                           "timeout.") from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise _Failure(f"no connection within {self.timeout:g} s (timeout)", True,
                               "check that the server is up and the base URL.") from exc
            raise _Failure(f"cannot connect ({reason})", True,
                           f"check that the server is running at {self.base_url}.") from exc
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise _Failure(f"connection failed ({type(exc).__name__}: {exc})", True,
                           f"check that the server at {self.base_url} is healthy.") from exc

    def _parse(self, raw: bytes) -> str:
        shown = raw[:300].decode("utf-8", "replace")
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise LMMError(
                f"the judge server at {self.url} (model {self.model}) answered with something "
                f"that is not JSON: {shown!r}; check that the base URL points at an "
                "OpenAI-compatible API root (usually ending in /v1).") from exc
        content = None
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            pass
        if isinstance(content, list):  # content given as parts by some servers
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        if not isinstance(content, str):
            raise LMMError(
                f"the reply of the judge server at {self.url} (model {self.model}) has no "
                f"choices[0].message.content; it sent: {shown!r}. Check that the model is a "
                "chat model and that the server speaks the OpenAI chat-completions API.")
        return content.strip()

    def generate(self, parts: Sequence[Part], *, system: str | None = None,
                 max_new_tokens: int = 512) -> str:
        data = json.dumps(self.request_body(parts, system=system,
                                            max_new_tokens=max_new_tokens)).encode("utf-8")
        tries = self.retries + 1
        for attempt in range(1, tries + 1):
            _comfy.check_interrupt()
            try:
                raw = self._post_once(data)
            except _Failure as failure:
                if failure.transient and attempt < tries:
                    delay = failure.retry_after if failure.retry_after is not None \
                        else self.backoff * 2 ** (attempt - 1)
                    delay = min(delay, self.max_backoff)
                    log.warning("judge call to %s (model %s) failed (%s); try %d of %d again "
                                "in %.1f s", self.url, self.model, failure.what, attempt + 1,
                                tries, delay)
                    self._sleep(delay)
                    continue
                count = f"after {attempt} tries" if attempt > 1 else "on the first try"
                raise LMMError(
                    f"the judge call to {self.url} (model {self.model}) failed {count}: "
                    f"{failure.what}. What to check: {failure.hint}",
                    transient=failure.transient) from failure
            return self._parse(raw)
        raise AssertionError("unreachable")  # pragma: no cover
