"""The ImgCoder nodes: ImgCoder (a model plans, codes, the sandbox renders) and Render
Figure Code (your code, rendered in the sandbox)."""
from __future__ import annotations

from .. import _comfy
from ..errors import ScienceT2IError
from ..lmm import LMM_TYPE
from .code_check import check_code
from .draw import draw_figure, raise_if_cancelled
from .sandbox import SandboxLimits, render_figure


def _png_to_image(png: bytes):
    import io

    from PIL import Image

    from ..core.images import from_pil
    return from_pil(Image.open(io.BytesIO(png)).convert("RGB"))


def _blank_image(width: int, height: int):
    import torch
    return torch.ones((1, height, width, 3), dtype=torch.float32)


SIZE = {"default": 1024, "min": 64, "max": 8192, "step": 8}
# the sandbox limits the nodes render under (one place to change them, e.g. in tests)
NODE_LIMITS = SandboxLimits()


class ImgCoderNode:
    """Draw a scientific figure as code: the model plans, writes matplotlib code, and the
    sandbox renders it (repairs on failure). For diagrams, plots, circuits, geometry."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (LMM_TYPE, {"tooltip": "from VLM Judge Loader: a local model or an "
                                              "OpenAI-compatible endpoint"}),
            "prompt": ("STRING", {"multiline": True, "default":
                                  "A 2 kg block rests on a 30° incline; draw the forces on it."}),
            "image_type": ("STRING", {"default": "free-body diagram"}),
            "width": ("INT", SIZE),
            "height": ("INT", {**SIZE, "default": 768}),
            "dpi": ("INT", {"default": 100, "min": 50, "max": 600}),
            "repairs": ("INT", {"default": 2, "min": 0, "max": 10}),
        }}

    RETURN_TYPES = ("IMAGE", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("image", "plan", "code", "log")
    FUNCTION = "draw"
    CATEGORY = "Science-T2I/ImgCoder"
    OUTPUT_NODE = True

    def draw(self, model, prompt, image_type, width, height, dpi, repairs):
        with _comfy.Progress(repairs + 3, desc="ImgCoder") as bar:
            result = draw_figure(model, prompt, image_type=image_type, width=width,
                                 height=height, dpi=dpi, repairs=repairs, limits=NODE_LIMITS,
                                 on_step=lambda _: bar.update(1))
        log_text = "\n".join(result.log)
        if not result.ok:
            raise ScienceT2IError(
                f"ImgCoder could not render a figure after {result.attempts} attempt(s); the "
                f"last error: {result.error}\nTry more repairs, a stronger model, or edit the "
                "code in a Render Figure Code node.")
        return {"ui": {"text": [log_text]},
                "result": (_png_to_image(result.png), result.plan, result.code, log_text)}


class RenderFigureCodeNode:
    """Render matplotlib code you write or edit, in the sandbox (never in ComfyUI's process).
    The code creates one figure; it is saved at width x height pixels."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "code": ("STRING", {"multiline": True, "default":
                                "import numpy as np\nimport matplotlib.pyplot as plt\n\n"
                                "x = np.linspace(0, 2 * np.pi, 200)\nfig, ax = plt.subplots()\n"
                                "ax.plot(x, np.sin(x))\nax.set_xlabel('t (s)')\n"
                                "ax.set_ylabel('x (m)')\n"}),
            "width": ("INT", SIZE),
            "height": ("INT", {**SIZE, "default": 768}),
            "dpi": ("INT", {"default": 100, "min": 50, "max": 600}),
        }}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "log")
    FUNCTION = "render"
    CATEGORY = "Science-T2I/ImgCoder"

    def render(self, code, width, height, dpi):
        problems = check_code(code)
        if problems:
            raise ScienceT2IError("the code was refused before running: " + "; ".join(problems))
        result = render_figure(code, width=width, height=height, dpi=dpi, limits=NODE_LIMITS,
                               should_stop=_comfy.interrupt_requested)
        raise_if_cancelled(result)
        if not result.ok:
            raise ScienceT2IError(f"the figure code failed in the sandbox: {result.error}")
        log_text = f"rendered {result.width}x{result.height} px in {result.seconds:.2f} s"
        if result.stdout:
            log_text += "\nprinted:\n" + result.stdout
        return (_png_to_image(result.png), log_text)


NODE_CLASS_MAPPINGS = {
    "ScienceT2I_ImgCoder": ImgCoderNode,
    "ScienceT2I_RenderFigureCode": RenderFigureCodeNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_ImgCoder": "ImgCoder (figure as code)",
    "ScienceT2I_RenderFigureCode": "Render Figure Code",
}
