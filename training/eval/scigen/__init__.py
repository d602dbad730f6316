"""SciGenBench's evaluation of generated scientific images: its records (``data``), the
judge's quizzes and rubric per image (``judging``), PSNR/SSIM/CLIP/FID (``metrics``), the
numbers and tables (``summary``), and the whole run behind ``science-t2i eval-scigen``
(``run``)."""
from .data import SciGenRecord, load_scigen_records
from .judging import judge_image_set
from .run import ScigenOptions, run_scigen
from .summary import scigen_markdown, summarise, summarise_groups

__all__ = ["SciGenRecord", "ScigenOptions", "judge_image_set", "load_scigen_records",
           "run_scigen", "scigen_markdown", "summarise", "summarise_groups"]
