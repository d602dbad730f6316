"""Backends chosen by the prefix of a model string: ``local:NAME``, ``openai:MODEL``.

A provider is a class deriving from ``LMMBackend`` with a ``from_spec(rest, endpoint)``
constructor. To add one: its module in this room, and its line in ``BACKENDS``.
"""
from __future__ import annotations

from collections.abc import Callable

from .. import _comfy
from ..errors import ScienceT2IError
from .base import EXAMPLE_VLM, Endpoint, LMMBackend
from .local import LocalBackend
from .openai import OpenAIBackend

BACKENDS: dict[str, Callable[[str, Endpoint], LMMBackend]] = {
    "local": LocalBackend.from_spec,
    "openai": OpenAIBackend.from_spec,
}


def backend_from_spec(spec: str, *, base_url: str | None = None,
                      api_key_env: str = "OPENAI_API_KEY", timeout: float = 120,
                      retries: int = 3) -> LMMBackend:
    """``PREFIX:REST`` -> the backend registered for PREFIX, built from REST and the endpoint
    settings (``local:NAME`` -> LocalBackend(NAME); ``openai:MODEL`` -> OpenAIBackend)."""
    kind, sep, rest = str(spec or "").strip().partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    factory = BACKENDS.get(kind) if sep and rest else None
    if factory is None:
        raise ScienceT2IError(
            f"unknown model {spec!r}: use 'local:NAME' (a folder under "
            f"{_comfy.default_folder('vlm')}, a directory path or a Hub id such as "
            f"{EXAMPLE_VLM}) or 'openai:MODEL' with a base URL (registered prefixes: "
            f"{', '.join(BACKENDS)}).")
    return factory(rest, Endpoint(base_url, api_key_env, float(timeout), int(retries)))
