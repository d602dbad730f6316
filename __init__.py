"""Science-T2I for ComfyUI.

ComfyUI imports this folder from custom_nodes/ (under whatever name it has) and reads the
mappings below; ``pip install`` exposes the same code as the package ``science_t2i``.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# the frontend extension (results shown on the nodes, score badges on previews) and the
# per-node help pages (web/docs/<node>.md) that ComfyUI serves at /extensions/<folder>/
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
