"""Evaluation: Science-T2I's reward accuracy and text-to-image ND/RI (``science_t2i``), its LMM
baseline (``judge_pairs``), SciGenBench (``scigen``), and what their reports share
(``reports``, ``judge_cache``)."""
from .judge_cache import JudgeCache, cache_key, image_digest
from .judge_pairs import judge_pair_accuracy
from .reports import bar_chart_png, charts_available, write_report
from .science_t2i import (collect_generated, compare_runs, evaluate_t2i_run, reward_accuracy,
                          reward_markdown, t2i_markdown)

__all__ = ["JudgeCache", "bar_chart_png", "cache_key", "charts_available", "collect_generated",
           "compare_runs", "evaluate_t2i_run", "image_digest", "judge_pair_accuracy",
           "reward_accuracy", "reward_markdown", "t2i_markdown", "write_report"]
