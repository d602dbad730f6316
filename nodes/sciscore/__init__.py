"""SciScore, the Science-T2I reward model, for graphs, the CLI, evaluation and training.

score(prompt, image) = exp(logit_scale) * cos(text_emb(prompt), image_emb(image)); the
preference probabilities are the softmax of the scores over the candidate images of one
prompt. ``load_sciscore`` is the factory (a transformers CLIPModel folder such as
``Jialuo21/SciScore``, or an open_clip ViT-H-14 safetensors file); ``SciScoreModel`` scores
ComfyUI IMAGE tensors. ``normalized_difference`` / ``relative_improvement`` are the paper's
text-to-image metrics computed from SciScore means.
"""
from .loading import DEFAULT_SCISCORE, load_clip_directory, load_sciscore, resolve_source
from .metrics import normalized_difference, relative_improvement
from .model import (SciScoreModel, count_images, image_views, parse_prompts,
                    preference_probabilities, rank_order)
from .preprocess import CLIP_MEAN, CLIP_STD, preprocess_images, resized_shape
from .save import save_scored_pngs

__all__ = ["CLIP_MEAN", "CLIP_STD", "DEFAULT_SCISCORE", "SciScoreModel", "count_images",
           "image_views", "load_clip_directory", "load_sciscore", "normalized_difference",
           "parse_prompts", "preference_probabilities", "preprocess_images", "rank_order",
           "relative_improvement", "resized_shape", "resolve_source", "save_scored_pngs"]
