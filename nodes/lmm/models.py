"""Finding local language models: models/vlm (image-text-to-text) and models/LLM (text
only), a directory path, or a Hugging Face Hub id (in the Hub cache, or downloaded when
online)."""
from __future__ import annotations

from .. import _comfy
from ..core import hub
from ..errors import ScienceT2IError
from .base import EXAMPLE_VLM


def list_vlms() -> list[str]:
    """Model directories under models/vlm (names for ``local:NAME``)."""
    return _comfy.list_models("vlm", extensions=(), include_dirs=True)


def list_llms() -> list[str]:
    """Model directories under models/LLM (text-only causal LMs)."""
    return _comfy.list_models("LLM", extensions=(), include_dirs=True)


def list_local_models() -> list[str]:
    """Every ``local:`` name: models/vlm's folders, then models/LLM's as ``LLM/<folder>``
    (text only, for ImgCoder)."""
    return list_vlms() + [f"LLM/{name}" for name in list_llms()]


def not_found(name: str) -> ScienceT2IError:
    where = _comfy.default_folder("vlm")
    if hub.looks_like_hub_id(name):
        command = hub.download_command(name, where / name.split("/")[-1])
        return ScienceT2IError(
            f"judge model {name!r} is neither in {where} nor in the Hugging Face cache, and "
            "offline mode (HF_HUB_OFFLINE) is on, so it cannot be downloaded. Download it "
            f"where there is internet access with:\n  {command}\nthen use "
            f"'local:{name.split('/')[-1]}' (or turn offline mode off).")
    command = hub.download_command(EXAMPLE_VLM, where / EXAMPLE_VLM.split("/")[-1])
    return ScienceT2IError(
        f"judge model {name!r} not found: expected a transformers model directory with "
        f"config.json in {where} (or a directory path, or a Hugging Face Hub id such as "
        f"{EXAMPLE_VLM}). Download a vision-language model there, e.g.:\n  {command}\n"
        "or use an OpenAI-compatible server ('openai:MODEL' with a base URL).")


def resolve_local_model(name: str) -> tuple[str, bool, str]:
    """(what from_pretrained gets, whether it is a local directory, the stable id) for
    ``name``: a folder under models/vlm (or models/LLM, also as ``LLM/<folder>``), a
    directory path, or a Hub id (found in models/vlm
    under its repository name, in the Hub cache, or downloaded when online)."""
    name = name.strip()
    if not name:
        raise ScienceT2IError("no judge model named: give a folder name under "
                              f"{_comfy.default_folder('vlm')}, a directory or a Hub id.")
    if name.startswith("LLM/"):  # a text-only model of models/LLM (ImgCoder)
        path = _comfy.resolve_model("LLM", name[4:])
        if path is None:
            raise ScienceT2IError(f"{name[4:]!r} is not a folder in "
                                  f"{_comfy.default_folder('LLM')}.")
    else:  # models/vlm (a Hub id where the download command puts it), then models/LLM
        path = hub.local_model("vlm", name) or _comfy.resolve_model("LLM", name)
    if path is not None:
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ScienceT2IError(
                f"{path} is not a transformers model directory (no config.json): a judge "
                "model is a folder with config.json, the weights (*.safetensors) and the "
                "processor/tokenizer files, e.g. a download of " + EXAMPLE_VLM + ".")
        return str(path.resolve()), True, path.resolve().name
    if not hub.looks_like_hub_id(name):
        raise not_found(name)
    if hub.hub_offline() and not hub.in_hub_cache(name):
        raise not_found(name)
    return name, False, name
