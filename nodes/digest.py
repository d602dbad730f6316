"""The one settings hash of the pack: sha256 of canonical JSON (sorted keys, no spaces).

Used for the LoRA metadata's ``training_config_sha256`` and for the trainers' resume checks,
so equal settings give equal digests wherever they are compared.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def json_digest(obj: Any, length: int | None = None) -> str:
    """Hex sha256 of ``obj`` as canonical JSON (values JSON cannot hold are written as str);
    ``length`` keeps only that many leading hex digits."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return digest[:length] if length else digest
