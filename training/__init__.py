"""Headless tools: the ``science-t2i`` command, evaluation and training.

Imports from ``..nodes`` (rollouts and evaluation run the very node code); ``nodes`` never
imports from here.
"""
