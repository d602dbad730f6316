"""Evaluation: Science-T2I's reward accuracy and text-to-image ND/RI (``science_t2i``), its LMM
baseline (``judge_pairs``), SciGenBench (``scigen``), and what their reports share
(``reports``, ``judge_cache``)."""
