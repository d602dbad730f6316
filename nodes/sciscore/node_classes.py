"""The SciScore nodes: loader, score, rank, pairwise, overlay, save, and the paper's ND.

Thin adapters: sockets -> the engine. Scores leave the nodes as lists of FLOAT
(OUTPUT_IS_LIST), one value per image, so downstream FLOAT inputs see every image's score;
the "ui" dict carries a STRING summary and the per-image scores, which the pack's frontend
extension (web/) shows on the node and as badges on previewed images."""
from __future__ import annotations

import logging
from typing import Any

import torch

from .. import _comfy
from ..core.images import as_rgb_batch
from ..errors import ScienceT2IError
from .loading import DEFAULT_SCISCORE, load_sciscore
from .metrics import mean_score, normalized_difference
from .model import SciScoreModel, count_images, parse_prompts, preference_probabilities, rank_order
from .preprocess import MODES as PREPROCESS_MODES
from .save import save_scored_pngs

log = logging.getLogger("science_t2i")


CATEGORY = "Science-T2I/SciScore"


def sciscore_choices() -> list[str]:
    """The hub id, then local checkpoints: HF folders and loose .safetensors files (not the
    weight files inside those folders)."""
    names = _comfy.list_models("sciscore", (".safetensors",), include_dirs=True)
    dirs = [n for n in names if not n.endswith(".safetensors")]
    files = [n for n in names if n.endswith(".safetensors")
             and not any(n.startswith(d + "/") for d in dirs)]
    return [DEFAULT_SCISCORE] + [n for n in dirs + files if n != DEFAULT_SCISCORE]


def _as_model(model: Any) -> SciScoreModel:
    if not isinstance(model, SciScoreModel):
        raise ScienceT2IError("connect a SCISCORE_MODEL from the SciScore Loader node.")
    return model


def _summary_lines(scores: torch.Tensor, prompts: list[str]) -> list[str]:
    probs = preference_probabilities(scores) if len(set(prompts)) == 1 else None
    lines = []
    for rank, i in enumerate(rank_order(scores), 1):
        p = f"  p={probs[i]:.3f}" if probs is not None else ""
        lines.append(f"#{rank} image {i}: {scores[i]:.3f}{p}")
    return lines


class SciScoreLoaderNode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (sciscore_choices(), {"tooltip": "A folder in models/sciscore, an open_clip "
                      ".safetensors, or the hub id (downloaded into models/sciscore on first use)."}),
            "dtype": (["auto", "fp16", "bf16", "fp32"], {"tooltip": "auto: fp16 on CUDA, fp32 on CPU"}),
            "batch_size": ("INT", {"default": 16, "min": 1, "max": 256,
                                   "tooltip": "images encoded per forward pass"}),
        }, "optional": {
            "preprocess": (list(PREPROCESS_MODES), {"default": "exact", "tooltip":
                           "exact: the pixels SciScore's own processor computes (the paper's "
                           "numbers); fast: one float resize, scores ~1e-3 off"}),
        }}

    RETURN_TYPES = ("SCISCORE_MODEL",)
    RETURN_NAMES = ("sciscore_model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the SciScore reward model (a CLIP-H fine-tuned for scientific realism)."

    def load(self, model: str, dtype: str = "auto", batch_size: int = 16,
             preprocess: str = "exact"):
        return (load_sciscore(model, device=None, dtype=dtype, batch_size=batch_size,
                              preprocess=preprocess),)


class SciScoreNode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "sciscore_model": ("SCISCORE_MODEL",),
            "images": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "One prompt for all images, or one line per image."}),
        }}

    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("scores", "summary")
    OUTPUT_IS_LIST = (True, False)
    FUNCTION = "score"
    CATEGORY = CATEGORY
    DESCRIPTION = ("SciScore of each image against its prompt: exp(logit_scale) * cosine of the "
                   "CLIP embeddings. Higher = more scientifically plausible.")

    def score(self, sciscore_model: Any, images: torch.Tensor, prompt: str):
        model = _as_model(sciscore_model)
        prompts = parse_prompts(prompt, count_images(images), split_lines=True)
        scores = model.score(images, prompts)
        summary = "\n".join(_summary_lines(scores, prompts) + model.truncation_lines(prompts))
        return {"ui": {"text": [summary], "scores": scores.tolist()},
                "result": (scores.tolist(), summary)}


class SciScoreRankNode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "sciscore_model": ("SCISCORE_MODEL",),
            "images": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": ""}),
            "top_k": ("INT", {"default": 0, "min": 0, "max": 4096,
                              "tooltip": "keep the best k images; 0 keeps all"}),
        }}

    RETURN_TYPES = ("IMAGE", "FLOAT", "INT", "STRING")
    RETURN_NAMES = ("images", "scores", "indices", "summary")
    OUTPUT_IS_LIST = (False, True, True, False)
    FUNCTION = "rank"
    CATEGORY = CATEGORY
    DESCRIPTION = "Sorts an image batch by SciScore, best first, and keeps the top k."

    def rank(self, sciscore_model: Any, images: torch.Tensor, prompt: str, top_k: int = 0):
        model = _as_model(sciscore_model)
        prompts = parse_prompts(prompt, count_images(images), split_lines=True)
        scores = model.score(images, prompts)
        order = rank_order(scores)
        keep = order[:top_k] if top_k > 0 else order
        batch = images if images.dim() == 4 else images.unsqueeze(0)
        summary = "\n".join(_summary_lines(scores, prompts)[:len(keep)]
                             + model.truncation_lines(prompts))
        # "scores": the kept images' scores in their new order, for the frontend's badges
        return {"ui": {"text": [summary], "scores": scores[keep].tolist()},
                "result": (batch[keep], scores[keep].tolist(), keep, summary)}


class SciScorePairwiseNode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "sciscore_model": ("SCISCORE_MODEL",),
            "image_a": ("IMAGE",),
            "image_b": ("IMAGE",),
            "prompt": ("STRING", {"multiline": True, "default": ""}),
        }}

    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("probability_a", "score_a", "score_b", "summary")
    OUTPUT_IS_LIST = (True, True, True, False)
    FUNCTION = "compare"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Probability that image A is the more scientifically plausible of the pair "
                   "(softmax of the two SciScores, the paper's accuracy protocol). Batches are "
                   "compared pair by pair.")

    def compare(self, sciscore_model: Any, image_a: torch.Tensor, image_b: torch.Tensor,
                prompt: str):
        model = _as_model(sciscore_model)
        na, nb = count_images(image_a), count_images(image_b)
        if na != nb:
            raise ScienceT2IError(f"image_a has {na} images and image_b {nb}: pairs are compared "
                                  "index by index, so give both the same batch size.")
        prompts = parse_prompts(prompt, na, split_lines=True)
        scores = model.score([image_a, image_b], prompts + prompts)  # sizes may differ
        sa, sb = scores[:na], scores[na:]
        prob_a = preference_probabilities(torch.stack([sa, sb], dim=-1))[:, 0]
        lines = [f"pair {i}: A {sa[i]:.3f} vs B {sb[i]:.3f} -> P(A) = {prob_a[i]:.3f} "
                 f"({_verdict(float(sa[i]), float(sb[i]))})" for i in range(na)]
        summary = "\n".join(lines + model.truncation_lines(prompts))
        return {"ui": {"text": [summary]},
                "result": (prob_a.tolist(), sa.tolist(), sb.tolist(), summary)}


def _verdict(score_a: float, score_b: float) -> str:
    if score_a == score_b:
        return "a tie: equally plausible"
    return f"{'A' if score_a > score_b else 'B'} more plausible"


def _flatten_images(images: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for batch in images:
        out += list(as_rgb_batch(batch, "images"))
    return out


class ScoreOverlayNode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from .overlay import POSITIONS
        return {"required": {
            "images": ("IMAGE",),
            "scores": ("FLOAT", {"forceInput": True}),
            "position": (list(POSITIONS),),
            "font_size": ("INT", {"default": 0, "min": 0, "max": 512,
                                  "tooltip": "0 = from the image size"}),
            "label": ("STRING", {"default": "SciScore", "tooltip": "text before the value"}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "overlay"
    CATEGORY = CATEGORY
    DESCRIPTION = "Writes each image's score onto it, so the preview shows it."

    def overlay(self, images: list, scores: list, position: list = ("top-left",),
                font_size: list = (0,), label: list = ("SciScore",)):
        from .overlay import overlay_scores
        flat = [float(s) for s in scores]
        n = sum(count_images(b) for b in images)
        if len(flat) != n:
            raise ScienceT2IError(f"{n} images but {len(flat)} scores: connect the scores output "
                                  "of the SciScore node that scored these images.")
        prefix = (label[0].strip() + " ") if label and label[0].strip() else ""
        out, k = [], 0
        for batch in images:
            rgb = as_rgb_batch(batch, "images")
            labels = [f"{prefix}{flat[k + i]:.2f}" for i in range(rgb.shape[0])]
            out.append(overlay_scores(rgb, labels, position[0], int(font_size[0])))
            k += rgb.shape[0]
        return (out,)


def _scoring_model_name(models: list | None, graph: Any) -> str:
    """The scorer's name: the connected model's, else the model input of the graph's only
    SciScore Loader (ComfyUI passes the API graph as the hidden PROMPT input), else ""."""
    if models and isinstance(models[0], SciScoreModel):
        return models[0].name
    if isinstance(graph, dict):
        names = {str(n.get("inputs", {}).get("model")) for n in graph.values()
                 if isinstance(n, dict) and n.get("class_type") == "ScienceT2I_SciScoreLoader"}
        if len(names) == 1:
            return names.pop()
    return ""


class SaveScoredImagesNode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "images": ("IMAGE",),
            "scores": ("FLOAT", {"forceInput": True}),
            "prompt": ("STRING", {"multiline": True, "default": ""}),
            "filename_prefix": ("STRING", {"default": "sciscore/scored"}),
        }, "optional": {
            "sciscore_model": ("SCISCORE_MODEL", {"tooltip": "the model that scored the "
                               "images, named in the metadata (else the graph's only SciScore "
                               "Loader, if there is one)"}),
        }, "hidden": {"graph": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    INPUT_IS_LIST = True
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Saves PNGs into the output folder with the prompt and SciScore (score, rank) "
                   "in the PNG text metadata.")

    def save(self, images: list, scores: list, prompt: list = ("",),
             filename_prefix: list = ("sciscore/scored",), sciscore_model: list | None = None,
             graph: list | None = None, extra_pnginfo: list | None = None):
        flat = _flatten_images(images)
        if not flat:
            raise ScienceT2IError("no images to save.")
        prompts = parse_prompts(prompt[0] if len(prompt) == 1 else list(prompt), len(flat),
                                split_lines=True)
        extra: dict[str, Any] = {}
        if graph and graph[0] is not None:
            extra["prompt"] = graph[0]
        if extra_pnginfo and isinstance(extra_pnginfo[0], dict):
            extra.update(extra_pnginfo[0])
        out_dir = _comfy.output_directory()
        scores = [float(s) for s in scores]
        model_name = _scoring_model_name(sciscore_model, graph[0] if graph else None)
        # images of different sizes are one list: ranks run over all of them
        paths = save_scored_pngs(flat, prompts, scores, out_dir, filename_prefix[0],
                                 model_name=model_name, extra_text=extra)
        ui_images = [{"filename": p.name, "type": "output",
                      "subfolder": p.parent.relative_to(out_dir.resolve()).as_posix()
                      if p.parent != out_dir.resolve() else ""} for p in paths]
        text = "\n".join(f"{p.name}: {s:.3f}" for p, s in zip(paths, scores))
        return {"ui": {"images": ui_images, "text": [text], "scores": scores}}


class NormalizedDifferenceNode:
    """Mean SciScore of the IP, EP and SP images (all scored against the implicit prompt)
    and the paper's Normalized Difference."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        score = ("FLOAT", {"forceInput": True, "tooltip": "SciScore scores against the "
                                                         "IMPLICIT prompt"})
        return {"required": {"implicit_scores": score, "explicit_scores": score,
                             "superficial_scores": score}}

    # SciScore outputs one FLOAT per image; take every image of each kind, not just the first.
    INPUT_IS_LIST = True
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("nd", "summary")
    FUNCTION = "compute"
    CATEGORY = "Science-T2I/SciScore"
    OUTPUT_NODE = True
    DESCRIPTION = "ND = 100 (IP - SP) / (EP - SP): 0 = literal reading, 100 = scientific outcome."

    def compute(self, implicit_scores, explicit_scores, superficial_scores):
        ip = mean_score(implicit_scores, "implicit_scores")
        ep = mean_score(explicit_scores, "explicit_scores")
        sp = mean_score(superficial_scores, "superficial_scores")
        nd = normalized_difference(ip, ep, sp)
        if nd is None:
            summary = (f"IP {ip:.3f}  EP {ep:.3f}  SP {sp:.3f}  ND undefined (EP = SP: the "
                       "explicit and superficial images score the same)")
            nd_value = float("nan")
        else:
            summary = f"IP {ip:.3f}  EP {ep:.3f}  SP {sp:.3f}  ND {nd:.1f}"
            nd_value = float(nd)
        return {"ui": {"text": [summary]}, "result": (nd_value, summary)}


NODE_CLASS_MAPPINGS = {
    "ScienceT2I_SciScoreLoader": SciScoreLoaderNode,
    "ScienceT2I_SciScore": SciScoreNode,
    "ScienceT2I_SciScoreRank": SciScoreRankNode,
    "ScienceT2I_SciScorePairwise": SciScorePairwiseNode,
    "ScienceT2I_ScoreOverlay": ScoreOverlayNode,
    "ScienceT2I_SaveScoredImages": SaveScoredImagesNode,
    "ScienceT2I_NormalizedDifference": NormalizedDifferenceNode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ScienceT2I_SciScoreLoader": "SciScore Loader",
    "ScienceT2I_SciScore": "SciScore",
    "ScienceT2I_SciScoreRank": "SciScore Rank",
    "ScienceT2I_SciScorePairwise": "SciScore Pairwise",
    "ScienceT2I_ScoreOverlay": "SciScore Overlay",
    "ScienceT2I_SaveScoredImages": "Save Scored Images",
    "ScienceT2I_NormalizedDifference": "Normalized Difference (ND)",
}
