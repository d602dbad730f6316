"""Multimodal judges: the questions the pack asks a multimodal model and how its replies are
read, for the nodes, ``eval-reward --judge`` and ``eval-scigen``.

Protocols (``protocols``): pairwise (which of two images fits a prompt, asked in both orders),
quiz (answer a question from an image alone), rubric (SciGenBench's five 0-2 scores). Replies
are read by ``choices`` and ``free_answers``; an unreadable reply is a ``Parsed`` with its
reason and text, never a guess.
"""
from .choices import parse_option, parse_pair_choice
from .free_answers import (SCORE_KEYS, final_answer_text, match_free_answer, parse_scores,
                           parse_verdict)
from .protocols import (PROMPT_VERSION, BothOrders, Quiz, ask_quiz, gold_letter, grade_quiz,
                        judge_both_orders, judge_pair, quiz_answer, rate_figure,
                        strict_pair_choice)
from .reply_text import Parsed, strip_thinking

__all__ = ["PROMPT_VERSION", "SCORE_KEYS", "BothOrders", "Parsed", "Quiz", "ask_quiz",
           "final_answer_text", "gold_letter", "grade_quiz", "judge_both_orders", "judge_pair",
           "match_free_answer", "parse_option", "parse_pair_choice", "parse_scores",
           "parse_verdict", "quiz_answer", "rate_figure", "strict_pair_choice",
           "strip_thinking"]
