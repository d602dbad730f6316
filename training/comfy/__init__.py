"""ComfyUI workflows outside ComfyUI: checking workflow files against the node definitions
(``workflow_check``, ``science-t2i validate-workflow``)."""
