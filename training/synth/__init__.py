"""Verified synthetic science data for training multimodal models (``science-t2i
synth-data``): images generated for problems that come with quizzes (``sources``), checked
by the inverse quiz and optional judge / SciScore thresholds, near-duplicates and answers
given away in the figure's text (``verify``), and exported as a conversational image+text
dataset that trl's SFTTrainer reads, with provenance per row and a report (``export``)."""
from .export import dataset_rows, export_dataset, synth_markdown, synth_report
from .sources import Drawn, draw_records
from .verify import Verdict, VerifyOptions, verify_images

__all__ = ["Drawn", "Verdict", "VerifyOptions", "dataset_rows", "draw_records",
           "export_dataset", "synth_markdown", "synth_report", "verify_images"]
