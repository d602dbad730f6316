"""The mask nodes: GroundingDINO Loader, Subject Mask, Mask to Latent Mask."""
from __future__ import annotations

from ..errors import ScienceT2IError
from .boxes import MASK_MODES, latent_mask
from .gdino import (BOX_THRESHOLD, DEFAULT_GDINO, HUB_MODELS, TEXT_THRESHOLD, GroundingDinoModel,
                    list_local_models, load_grounding_dino)
from .subject import draw_preview, subject_masks


class GroundingDinoLoaderNode:
    """Load GroundingDINO from models/grounding-dino (transformers folder or original .pth)."""

    @classmethod
    def INPUT_TYPES(cls):
        names = list_local_models()
        choices = names + [h for h in HUB_MODELS if h not in names]
        return {"required": {
            "model_name": (choices, {"default": choices[0] if names else DEFAULT_GDINO,
                                     "tooltip": "A folder in models/grounding-dino (Hugging Face "
                                                "layout), an original .pth with its .cfg.py, or a "
                                                "hub id downloaded there on first use."}),
            "dtype": (["auto", "fp32", "fp16", "bf16"], {"default": "auto"}),
        }, "optional": {
            "image_size": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 32,
                                   "tooltip": "Shorter-side resize before detection; 0 = the "
                                              "model's (800). Smaller is faster."}),
        }}

    RETURN_TYPES = ("GDINO_MODEL",)
    RETURN_NAMES = ("gdino_model",)
    FUNCTION = "load"
    CATEGORY = "Science-T2I/Masks"

    def load(self, model_name: str, dtype: str = "auto", image_size: int = 0):
        return (load_grounding_dino(model_name, dtype=dtype, image_size=image_size),)


class SubjectMaskNode:
    """Detect the subject with GroundingDINO and mask it as the paper does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "gdino_model": ("GDINO_MODEL",),
            "image": ("IMAGE",),
            "subject": ("STRING", {"default": "", "multiline": False,
                                   "tooltip": "What to find, e.g. 'glass' or 'ink stain'; "
                                              "separate several with commas."}),
            "box_threshold": ("FLOAT", {"default": BOX_THRESHOLD, "min": 0.0, "max": 1.0,
                                        "step": 0.01}),
            "text_threshold": ("FLOAT", {"default": TEXT_THRESHOLD, "min": 0.0, "max": 1.0,
                                         "step": 0.01}),
            "mode": (MASK_MODES, {"default": "merge",
                                  "tooltip": "merge: one enclosing box widened by 10% (the "
                                             "paper); union: every box."}),
            "padding": ("INT", {"default": 0, "min": 0, "max": 4096}),
            "feather": ("INT", {"default": 0, "min": 0, "max": 1024}),
        }}

    # BOUNDING_BOX: core's box type (its detection nodes' layout: per image, a list of
    # {x, y, width, height} in pixels); on a core without it the socket just has no takers
    RETURN_TYPES = ("MASK", "STRING", "IMAGE", "BOUNDING_BOX")
    RETURN_NAMES = ("mask", "boxes_json", "preview", "boxes")
    FUNCTION = "run"
    CATEGORY = "Science-T2I/Masks"

    def run(self, gdino_model, image, subject, box_threshold=BOX_THRESHOLD,
            text_threshold=TEXT_THRESHOLD, mode="merge", padding=0, feather=0):
        if not isinstance(gdino_model, GroundingDinoModel):
            raise ScienceT2IError("gdino_model: connect a GroundingDINO Loader node.")
        result = subject_masks(gdino_model, image, subject, box_threshold, text_threshold,
                               mode, int(padding), float(feather))
        found = sum(not f for f in result.fallback)
        summary = f"{found}/{len(result.fallback)} image(s) with '{subject}' detected"
        return {"ui": {"text": [summary]},
                "result": (result.mask, result.to_json(mode), draw_preview(image, result),
                           [d.bounding_boxes() for d in result.detections])}


class MaskToLatentMaskNode:
    """A MASK on the latent grid (area average): VAE factor 8, optionally FLUX 2x2 packing."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mask": ("MASK",),
            "vae_factor": ("INT", {"default": 8, "min": 1, "max": 64}),
            "packing": (["none", "flux 2x2"], {"default": "none"}),
            "dilation": ("INT", {"default": 0, "min": 0, "max": 64,
                                 "tooltip": "Grow the mask by this many latent cells."}),
        }}

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("latent_mask",)
    FUNCTION = "run"
    CATEGORY = "Science-T2I/Masks"

    def run(self, mask, vae_factor=8, packing="none", dilation=0):
        if packing not in ("none", "flux 2x2"):
            raise ScienceT2IError(f"packing {packing!r} is unknown; use 'none' or 'flux 2x2'.")
        return (latent_mask(mask, int(vae_factor), packing == "flux 2x2", int(dilation)),)


NODE_CLASS_MAPPINGS = {
    "ScienceT2I_GroundingDinoLoader": GroundingDinoLoaderNode,
    "ScienceT2I_SubjectMask": SubjectMaskNode,
    "ScienceT2I_MaskToLatentMask": MaskToLatentMaskNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_GroundingDinoLoader": "GroundingDINO Loader",
    "ScienceT2I_SubjectMask": "Subject Mask",
    "ScienceT2I_MaskToLatentMask": "Mask to Latent Mask",
}
