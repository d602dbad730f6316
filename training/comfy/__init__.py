"""ComfyUI workflows outside ComfyUI: checking workflow files against the node definitions
(``workflow_check``, ``workflow_ui``, ``node_defs``; ``science-t2i validate-workflow``)."""
from .node_defs import load_node_defs
from .workflow_check import check_twins, check_workflow, load_workflow, validate_files
from .workflow_ui import ui_to_api

__all__ = ["check_twins", "check_workflow", "load_node_defs", "load_workflow", "ui_to_api",
           "validate_files"]
