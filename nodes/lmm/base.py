"""What every language-model backend shares: the input parts, the interface, the error."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from ..errors import ScienceT2IError

Part = str | Image.Image  # text and images, interleaved in the order the model sees them

# what the "not found" messages suggest downloading
EXAMPLE_VLM = "Qwen/Qwen2.5-VL-3B-Instruct"


class LMMError(ScienceT2IError):
    """A model call that failed after its retries (timeout, HTTP error, unusable reply).

    ``transient``: whether the last failure was of the kind that may pass by itself
    (timeout, connection error, HTTP 429 or 5xx), so that trying later may succeed.
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class LMMBackend:
    """What the judges and ImgCoder talk to: text and images in, the model's text out.
    ``name`` is a stable id used in cache keys."""

    name: str = "lmm"

    def generate(self, parts: Sequence[Part], *, system: str | None = None,
                 max_new_tokens: int = 512) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def check_parts(parts: Sequence[Part]) -> list[Part]:
    if isinstance(parts, (str, Image.Image)):
        parts = [parts]
    parts = list(parts)
    if not parts:
        raise ScienceT2IError("the model got no input: pass text and/or images as parts.")
    for i, part in enumerate(parts):
        if not isinstance(part, (str, Image.Image)):
            raise ScienceT2IError(
                f"model input part {i} is a {type(part).__name__}; parts must be strings or "
                "PIL images (convert a ComfyUI IMAGE tensor with nodes.core.images.to_pil).")
    return parts


def rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass(frozen=True)
class Endpoint:
    """How to reach a served model (backends that run locally ignore it): the API root, the
    environment variable holding the key, the timeout of one call and the retries after it."""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    retries: int = 3
