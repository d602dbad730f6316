"""Science-T2I for ComfyUI.

ComfyUI imports this folder from custom_nodes/ (under whatever name it has) and reads the
mappings below; ``pip install`` exposes the same code as the package ``science_t2i``.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
