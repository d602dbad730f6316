"""Subject masks: GroundingDINO detection -> boxes -> image mask -> latent mask.

The paper's masked online fine-tuning queries GroundingDINO with the prompt's subject, merges
the detections into one enclosing box widened by 0.1 of the image size (no detection: the
whole image), and restricts the policy update to that box in latent space.
"""
from .boxes import (MASK_MODES, boxes_to_mask, cxcywh_to_xyxy, latent_mask, merge_boxes_cxcywh,
                    paper_latent_box_mask, subject_boxes, xyxy_to_cxcywh)
from .gdino import (BOX_THRESHOLD, DEFAULT_GDINO, TEXT_THRESHOLD, Detection, GroundingDinoModel,
                    load_grounding_dino, prepare_caption)
from .subject import SubjectMasks, draw_preview, masks_from_detections, subject_masks

__all__ = ["BOX_THRESHOLD", "DEFAULT_GDINO", "MASK_MODES", "TEXT_THRESHOLD", "Detection",
           "GroundingDinoModel", "SubjectMasks", "boxes_to_mask", "cxcywh_to_xyxy",
           "draw_preview", "latent_mask", "load_grounding_dino", "masks_from_detections",
           "merge_boxes_cxcywh", "paper_latent_box_mask", "prepare_caption", "subject_boxes",
           "subject_masks", "xyxy_to_cxcywh"]
