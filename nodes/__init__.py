"""The pack's node registry.

Each capability is a subpackage (a room) whose ``node_classes`` module holds its thin V1
node classes and their ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``; they are
merged here, in menu order. The rooms' engines are plain Python/torch and import without
ComfyUI; ``_comfy`` is the only module that talks to it.
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger("science_t2i")

# Rooms that define nodes, in menu order.
NODE_ROOMS: list[str] = ["sciscore", "prompts", "lora", "masks", "judges", "imgcoder"]

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _room in NODE_ROOMS:
    _mod = importlib.import_module(f".{_room}.node_classes", __name__)
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
