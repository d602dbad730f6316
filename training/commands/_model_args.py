"""Arguments every command that talks to a judge or language model shares: where an
``openai:`` endpoint is, its key's variable, the time per call and the retries; and the
backend built from them."""
from __future__ import annotations

import argparse
from typing import Any


def add_endpoint_args(parser: Any, *, timeout: float) -> None:
    """--base-url, --api-key-env, --timeout and --retries on ``parser`` (or a group)."""
    parser.add_argument("--base-url", default=None,
                        help="OpenAI-compatible endpoint of openai: models")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the endpoint's key")
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per call")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries of a call that timed out or met a server error")


def backend_from_args(spec: str, args: argparse.Namespace) -> Any:
    """The backend of ``local:NAME`` / ``openai:MODEL`` with the endpoint arguments."""
    from ...nodes.lmm import backend_from_spec
    return backend_from_spec(spec, base_url=args.base_url, api_key_env=args.api_key_env,
                             timeout=args.timeout, retries=args.retries)
