"""Judge-reply parsers on reply shapes that real LMM judges produce; expectations by hand."""
from __future__ import annotations

import time

import pytest
from science_t2i.nodes import judges as ja
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.judges import (SCORE_KEYS, Parsed, parse_option, parse_pair_choice,
                                      strip_thinking)
from science_t2i.nodes.judges.free_answers import match_free_answer, parse_scores


def _check_failed(p: Parsed, raw: str) -> None:
    assert p.value is None and not p.ok
    assert p.reason  # says why
    assert p.text == raw  # kept to report the reply


# --- pairwise choice ------------------------------------------------------------------------
PAIR_OK = [
    ('{"choice": "image-1"}', False, 1),
    ('```json\n{"choice": "image-2"}\n```', False, 2),
    ("{'choice': 'image-1'}", False, 1),
    ('{"choice": "Image 2"}', False, 2),
    ('{"choice": 1}', False, 1),
    ('{\n  "reason": "the shadow points away from the lamp",\n  "choice": "image-2",\n}',
     False, 2),  # trailing comma
    ("image-1", False, 1),
    ("Image-2.", False, 2),
    ("2", False, 2),
    ("The second image", False, 2),
    ("Image 1 is more accurate because the shadow falls away from the lamp.", False, 1),
    ("I choose image-2", False, 2),
    ("**Answer:** Image-1", False, 1),
    ("Image-1 shows the ice sinking while Image-2 shows it floating. "
     "Therefore, the answer is Image-2.", False, 2),
    ("Both images are plausible, but Image 2 is more accurate.", False, 2),
    ("Image 2 better matches the prompt: its reflection is correct.", False, 2),
    ("After careful comparison, image-2 is the better one.", False, 2),
    ('<think>Image 1 looks right... no wait, image 2 is better.</think>\n{"choice": "image-1"}',
     False, 1),
    ("Let me compare both images carefully, image 2 first.\n</think>\n\nImage-1", False, 1),
    ('user\nWhich image fits the prompt better, image-1 or image-2?\nassistant\n'
     '{"choice": "image-2"}', False, 2),
    ("A", True, 1),
    ("B.", True, 2),
    ("Two", False, 2),
    ("The answer is B", True, 2),
    ('{"choice": "A"}', True, 1),
    ("Image-1 keeps the shadow; image-2 loses it.\nImage 1", False, 1),  # bare final line
    ("I would not choose image 1. Image 2 fits the prompt better.", False, 2),
    ("USER: <image>\nCompare image 1 and image 2. ASSISTANT: The second image.", False, 2),
]


@pytest.mark.parametrize("reply, letters, expected", PAIR_OK)
def test_pair_choice_parsed(reply, letters, expected):
    p = parse_pair_choice(reply, letters=letters)
    assert (p.value, p.reason, p.ok) == (expected, "", True)
    assert p.text == reply


PAIR_NONE = [
    ("", False),
    ("I cannot determine which image is better.", False),
    ("Neither image 1 nor image 2 is correct.", False),
    ('{"choice": "both"}', False),
    ("neither", False),
    ("Both", False),
    ("Image-1 shows a red ball. Image-2 shows a blue ball.", False),
    ("A", False),  # letters only count when the prompt allowed them
    ("<think>Image 1 is clearly the right one because", False),  # cut off mid-thought
]


@pytest.mark.parametrize("reply, letters", PAIR_NONE)
def test_pair_choice_unparseable(reply, letters):
    _check_failed(parse_pair_choice(reply, letters=letters), reply)


def test_pair_choice_reason_names_the_bad_value():
    assert "both" in parse_pair_choice('{"choice": "both"}').reason


# --- multiple-choice letter -----------------------------------------------------------------
TEXTS = {"A": "6 N", "B": "45°", "C": "12 N", "D": "24 N"}
OPTION_OK = [
    ("A", "ABCD", "A"),
    ("(B)", "ABCD", "B"),
    ("B)", "ABCD", "B"),
    ("Answer: C", "ABCD", "C"),
    ("The answer is D.", "ABCD", "D"),
    ("**C**", "ABCD", "C"),
    ("\\boxed{B}", "ABCD", "B"),
    ("Option B: 45°", TEXTS, "B"),
    ('{"answer": "C"}', "ABCD", "C"),
    ('```json\n{"answer": "C. 12 N"}\n```', TEXTS, "C"),
    ("C. 12 N", TEXTS, "C"),
    ("12 N", TEXTS, "C"),
    ("45 degrees", TEXTS, "B"),
    ("I think it's B, not A", "ABCD", "B"),
    ("b", "ABCD", "B"),
    ("The correct option is c.", "ABCD", "C"),
    ("A ball rolls down the slope and speeds up, so the net force points along the slope. "
     "The answer is C.", "ABCD", "C"),
    ("Options A and D ignore friction, so B.", "ABCD", "B"),
    ("<think>The answer is A.</think>The answer is (D).", "ABCD", "D"),
    ("Let me check each option.\nA: too small.\nB: wrong unit.\nC: correct.\nD: too large.\n\n"
     "Final answer: C", "ABCD", "C"),
    ("A is correct because the forces balance.", "ABCD", "A"),
    ("E", "ABCDE", "E"),
    ("The answer is B", ["A", "B"], "B"),
    ("Answer: A. Wait, I misread the scale. The correct answer is B.", "ABCD", "B"),
]


@pytest.mark.parametrize("reply, options, expected", OPTION_OK)
def test_option_parsed(reply, options, expected):
    p = parse_option(reply, options)
    assert (p.value, p.reason) == (expected, "")
    assert p.text == reply


OPTION_NONE = [
    ("A ball rolls down the slope and speeds up.", "ABCD"),  # the article, not an answer
    ("the answer is a ball rolling down", "ABCD"),
    ("None of the above.", "ABCD"),
    ("I cannot determine the answer from the image.", "ABCD"),
    ("A or B", "ABCD"),
    ("E", "ABCD"),  # not an offered option
    ("", "ABCD"),
    ("7 N", TEXTS),
    ("Either 6 N or 12 N", TEXTS),  # two option texts named
    ("A. 6 N\nB. 45°\nC. 12 N\nD. 24 N", TEXTS),  # the options echoed, no answer
]


@pytest.mark.parametrize("reply, options", OPTION_NONE)
def test_option_unparseable(reply, options):
    _check_failed(parse_option(reply, options), reply)


def test_option_ambiguity_reason_lists_letters():
    assert "A, B" in parse_option("A or B").reason


def test_option_rejects_texts_as_letters():
    with pytest.raises(ScienceT2IError, match="single letters"):
        parse_option("A", ["12 N", "24 N"])


# --- five-dimension scores ------------------------------------------------------------------
S = dict(zip(SCORE_KEYS, (2, 1, 2, 0, 1), strict=True))
JSON_S = ('{"Correctness_Fidelity": 2, "Layout_Precision": 1, "Readability_Occlusion": 2, '
          '"Scientific_Plausibility": 0, "Expressiveness_Richness": 1}')
SCORES_OK = [
    JSON_S,
    "The diagram labels every vector but the arrows overlap the text.\n```json\n" + JSON_S
    + "\n```",
    '{\n  "Correctness_Fidelity": 2, // all parts present\n  "Layout_Precision": 1,\n'
    '  "Readability_Occlusion": 2,\n  "Scientific_Plausibility": 0,\n'
    '  "Expressiveness_Richness": 1,\n}',
    "Correctness & Fidelity: 2\nLayout & Precision: 1\nReadability & Occlusion: 2\n"
    "Scientific Plausibility: 0\nExpressiveness & Richness: 1",
    "Assessment:\n- **Correctness & Fidelity:** 2/2 - all parts present\n"
    "- **Layout & Precision:** 1/2\n- **Readability & Occlusion:** 2/2\n"
    "- **Scientific Plausibility:** 0/2 - the lens bends light the wrong way\n"
    "- **Expressiveness & Richness:** 1/2",
    "| Dimension | Score | Note |\n|---|---|---|\n| Correctness & Fidelity | 2 | ok |\n"
    "| Layout & Precision | 1 | crowded |\n| Readability & Occlusion | 2 | |\n"
    "| Scientific Plausibility | 0 | wrong |\n| Expressiveness & Richness | 1 | |",
    '{"correctness_fidelity": 2, "layout precision": 1, "Readability-Occlusion": 2, '
    '"SCIENTIFIC_PLAUSIBILITY": 0, "Expressiveness and Richness": 1}',
    'Draft: {"Correctness_Fidelity": 0, "Layout_Precision": 0, "Readability_Occlusion": 0, '
    '"Scientific_Plausibility": 2, "Expressiveness_Richness": 2}\nOn reflection:\n' + JSON_S,
    '{"scores": ' + JSON_S + ', "summary": "mostly right"}',
    '{"Correctness_Fidelity": {"score": 2, "reason": "ok"}, "Layout_Precision": {"score": 1}, '
    '"Readability_Occlusion": {"score": 2}, "Scientific_Plausibility": {"score": 0}, '
    '"Expressiveness_Richness": {"score": 1}}',
    "<think>Maybe Correctness_Fidelity is 0.</think>\n" + JSON_S,
    "Layout & Precision: 2 at first sight.\n" + JSON_S,
    "Correctness & Fidelity: The image shows 3 gears.\n" + JSON_S.replace(", ", ",\n"),
    JSON_S.replace(", ", ",\n")[:-1],  # cut off before "}" (max_tokens): read line by line
]


@pytest.mark.parametrize("reply", SCORES_OK)
def test_scores_parsed(reply):
    p = parse_scores(reply)
    assert (p.value, p.reason) == (S, "")


SCORES_NONE = [
    (JSON_S.replace('"Layout_Precision": 1', '"Layout_Precision": 3'),
     "scores out of range: Layout_Precision=3"),
    (JSON_S.replace('"Layout_Precision": 1', '"Layout_Precision": 1.5'),
     "non-integer scores: Layout_Precision=1.5"),
    (JSON_S.replace(', "Expressiveness_Richness": 1', ""),
     "missing scores: Expressiveness_Richness"),
    ("The image is good overall, I would rate it highly.", "no scores found"),
    ("Correctness & Fidelity: 2\nLayout & Precision: -1\nReadability & Occlusion: 2\n"
     "Scientific Plausibility: 0\nExpressiveness & Richness: 1",
     "scores out of range: Layout_Precision=-1"),
    ('{"Correctness_Fidelity": true, "Layout_Precision": 1, "Readability_Occlusion": 2, '
     '"Scientific_Plausibility": 0, "Expressiveness_Richness": "high"}',
     "non-integer scores: Correctness_Fidelity=True, Expressiveness_Richness=high"),
    (JSON_S.replace(": 0,", ": NaN,"), "non-integer scores: Scientific_Plausibility=nan"),
    ("", "empty reply"),
]


@pytest.mark.parametrize("reply, reason", SCORES_NONE)
def test_scores_unparseable(reply, reason):
    p = parse_scores(reply)
    _check_failed(p, reply)
    assert p.reason == reason


def test_scores_line_variants():
    reply = ("Layout & Precision - 2\nCorrectness & Fidelity (0-2): 1\n"
             "1. Readability & Occlusion = 0\nScientific Plausibility – 2\n"
             "Expressiveness & Richness: score: 1")
    assert parse_scores(reply).value == dict(zip(SCORE_KEYS, (1, 2, 0, 2, 1), strict=True))


def test_scores_last_complete_object_wins_even_if_invalid():
    # The final object is the judge's answer; an earlier valid one must not be used instead.
    reply = JSON_S + "\nCorrection:\n" + JSON_S.replace(": 0,", ": 5,")
    assert parse_scores(reply).reason == "scores out of range: Scientific_Plausibility=5"


def test_scores_json_beats_score_lines():
    # Complete "Label: n" lines in the reasoning, a draft object, then the final object.
    lines = "\n".join(f"{k}: 0" for k in SCORE_KEYS)
    draft = JSON_S.replace(": 2,", ": 1,")
    assert parse_scores(lines + "\n" + draft + "\nFinal:\n" + JSON_S).value == S
    assert parse_scores(JSON_S + "\n" + lines).value == S


def test_scores_custom_keys_and_range():
    p = parse_scores("Accuracy: 7\nStyle: 10", ["accuracy", "style"], low=1, high=10)
    assert p.value == {"accuracy": 7, "style": 10}
    with pytest.raises(ScienceT2IError):
        parse_scores("x", [])
    with pytest.raises(ScienceT2IError):
        parse_scores("x", low=3, high=1)


# --- free-form answers ----------------------------------------------------------------------
FREE = [
    ("12 N", "12", True),
    ("12", "12 N", True),
    ("3/4", "0.75", True),
    ("75%", "0.75", True),
    ("0.75", "75%", True),
    ("$\\frac{1}{2}$", "0.5", True),
    ("\\boxed{45^\\circ}", "45 degrees", True),
    ("45°", "45 degrees", True),
    ("The answer is 12.05 N.", "12", True),
    ("12.5", "12", False),
    ("The answer is 13 N.", "$12\\,\\mathrm{N}$", False),
    ("3 \\times 10^{8} m/s", "3e8", True),
    ("Each rope holds 3 N, so the total is 6 N", "6", True),
    ("Answer: 6 N (3 N per rope)", "6", True),
    ("1,200 J", "1200", True),
    ("0.5 m/s^2", "0.5", True),
    ("-4.9", "−4.9", True),
    ("three", "3", True),
    ('{"answer": "24 N"}', "24", True),
    ("<think>Maybe 7.</think>\nThe final answer is \\boxed{\\dfrac{3}{4}}.", "0.75", True),
    ("Photosynthesis", "photosynthesis.", True),
    ("It is Newton's third law.", "Newton's third law", True),
    ("Newton's second law", "Newton's third law", False),
    ("  H2O ", "h2o", True),
    ("It is not red.", "red", False),
    # a long sentence that merely mentions the gold word does not state it
    ("The figure mixes up inertia with the friction acting between the two blocks", "inertia",
     False),
    ("Answer: convex lens", "a convex lens", True),
    ("12 N. Because F = ma = 3 × 4.", "12", True),  # leads with its answer
    ("10^3 Pa", "1000", True),
    ("2:1", "2:1", True),
    ("1:2", "2:1", False),
    ("I cannot determine it exactly, but the answer is 12 N.", "12", True),
]


@pytest.mark.parametrize("prediction, gold, expected", FREE)
def test_free_answer(prediction, gold, expected):
    p = match_free_answer(prediction, gold)
    assert (p.value, p.reason, p.ok) == (expected, "", True)


def test_free_answer_tolerance():
    assert match_free_answer("12.5", "12", rel_tol=0.05).value is True
    assert match_free_answer("12.1", "12", rel_tol=1e-3).value is False


FREE_NONE = [
    ("", "12"),
    ("I cannot determine the answer from the image.", "12"),
    ("The ball stays still.", "12"),
    ("<think>It is 12.</think>", "12"),
    ("I don't know.", "convex lens"),
]


@pytest.mark.parametrize("prediction, gold", FREE_NONE)
def test_free_answer_no_answer(prediction, gold):
    _check_failed(match_free_answer(prediction, gold), prediction)


def test_free_answer_needs_gold():
    with pytest.raises(ScienceT2IError, match="gold"):
        match_free_answer("12", "  ")


# --- shared helpers -------------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected", [
    ("<think>a\nb</think>\n\nImage-1", "Image-1"),
    ("reasoning only in the prompt's open tag</think>B", "B"),
    ("<think>cut off", ""),
    ("<THINKING>x</THINKING> C <think>y</think>", "C"),
    ("no tags", "no tags"),
])
def test_strip_thinking(reply, expected):
    assert strip_thinking(reply) == expected


@pytest.mark.parametrize("reply", [
    "<think>" * 5000, "{" * 1500, "A " * 3000, "Layout" + " " * 3000 + "-",
    "a" + " " * 5000 + "x", "\\boxed{" * 1000, "10^999", "0^-1", "**", None,
    '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_pathological_replies_fail_fast_without_raising(reply):
    # Judges sometimes loop or emit garbage; a parser must answer, not hang or crash.
    start = time.perf_counter()
    for parse in (parse_pair_choice, parse_option, parse_scores,
                  lambda r: match_free_answer(r, "12")):
        assert isinstance(parse(reply), Parsed)
    assert time.perf_counter() - start < 5


def test_parsed_is_frozen():
    p = Parsed(1, "", "x")
    with pytest.raises(AttributeError):
        p.value = 2


@pytest.mark.parametrize("reply, expected", [
    ('{"correct": true}', True),
    ('Reasoning... {"is_correct": 0, "reasoning": "wrong unit"}', False),
    ("```json\n{'correct': True}\n```", True),
    ("<think>is it correct?</think>The student is incorrect.", False),
    ("Yes", True),
    ("I am not sure.", None),
])
def test_grader_verdicts(reply, expected):
    parsed = ja.parse_verdict(reply)
    assert parsed.value is expected and parsed.text == reply
    assert bool(parsed.reason) == (expected is None)


@pytest.mark.parametrize("reply, expected", [
    ("The tension balances the weight.\nAnswer: 12 N", "12 N"),
    ("**Answer:** 45°", "45°"),
    ("so the result is \\boxed{3/4}", "3/4"),
    ('{"answer": "0.5 m"}', "0.5 m"),
    ("No idea.\nProbably 7", "Probably 7"),
    ("", ""),
])
def test_final_answer_text(reply, expected):
    assert ja.final_answer_text(reply) == expected
