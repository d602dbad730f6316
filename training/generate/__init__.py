"""Generating images in batches for the evaluations: ImgCoder over a file of problems
(``imgcoder``), resumable, into a folder ``eval-scigen`` reads."""
