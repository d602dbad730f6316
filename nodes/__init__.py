"""Node modules of the pack. Each capability module ends with its V1 node classes and
its own NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS; they are merged here."""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger("science_t2i")

# Capability modules that define nodes, in menu order.
NODE_MODULES: list[str] = ["sciscore", "metrics", "prompts", "lora", "masks", "judge", "imgcoder"]

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _name in NODE_MODULES:
    _mod = importlib.import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(getattr(_mod, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
