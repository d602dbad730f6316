"""ImgCoder: a language model draws a scientific figure as code, rendered in a sandbox.

``draw_figure`` has a model (any ``lmm`` backend) understand and plan the figure, then write
matplotlib code; ``render_figure`` runs that code only in a separate, confined process
(``sandbox``, ``sandbox_child``) after the static ``check_code``; failures go back to the
model for bounded repairs.
"""
from .code_check import ALLOWED_IMPORTS, check_code
from .draw import ImgCoderResult, draw_figure, extract_code
from .sandbox import RenderResult, SandboxLimits, SandboxPool, default_pool, render_figure

__all__ = ["ALLOWED_IMPORTS", "ImgCoderResult", "RenderResult", "SandboxLimits", "SandboxPool",
           "check_code", "default_pool", "draw_figure", "extract_code", "render_figure"]
