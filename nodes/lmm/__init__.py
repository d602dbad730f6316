"""Language-model backends: one interface (text and images in, the model's text out) for
the judges, ImgCoder and the prompt rewriter.

``backend_from_spec("local:NAME" | "openai:MODEL", ...)`` builds one by its prefix
(``registry.BACKENDS``); ``LocalBackend`` is the one in-process loader of text and
image-text models, ``OpenAIBackend`` any OpenAI-compatible endpoint.
"""
from .base import EXAMPLE_VLM, Endpoint, LMMBackend, LMMError, Part
from .local import LocalBackend
from .models import list_llms, list_local_models, list_vlms, resolve_local_model
from .openai import OpenAIBackend, image_data_url
from .registry import BACKENDS, backend_from_spec

# the ComfyUI socket type of a loaded backend (VLM Judge Loader -> judges, ImgCoder)
LMM_TYPE = "SCIENCE_LMM"

__all__ = ["BACKENDS", "EXAMPLE_VLM", "LMM_TYPE", "Endpoint", "LMMBackend", "LMMError",
           "LocalBackend", "OpenAIBackend", "Part", "backend_from_spec", "image_data_url",
           "list_llms", "list_local_models", "list_vlms", "resolve_local_model"]
