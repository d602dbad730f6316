"""Generating images in batches for the evaluations: ImgCoder over a file of problems
(``imgcoder``), resumable, into a folder ``eval-scigen`` reads."""
from .imgcoder import Problem, load_problems, run_imgcoder

__all__ = ["Problem", "load_problems", "run_imgcoder"]
