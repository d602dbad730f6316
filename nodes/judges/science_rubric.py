"""The Science-T2I benchmark's rubric judge: one generated image, the prompt it was made from
and the record's own criteria (``scene_scoring``: what the scene must contain;
``real_scoring``: what the scientific outcome must look like) -> a description of the image, a
scene score and a reality score, 0-3.

The protocol follows the paper's evaluation: the judge answers in JSON with a description, a
scene score and a reality score (reality 0 when the scene fails); a record scores its
"overall score" when the reply gives one, else its reality score; the benchmark's score is
the mean over records divided by 3, out of 100, overall and per category and per task.
Unreadable replies are failures: counted and listed, left out of the mean, never guessed.

The wording of ``RUBRIC_JUDGE_PROMPT`` is the pack's own. To reproduce published numbers,
give the reference's prompt text as a template (``{prompt}``, ``{scene}``, ``{reality}``
placeholders; see the README).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ScienceT2IError
from .reply_text import Parsed, failed, json_objects, plain_text, reply_body

RUBRIC_JUDGE_PROMPT = """You grade whether an AI-generated image shows what science says
should happen, not just the literal words of its prompt.

The image was generated for this prompt:
{prompt}

Scene requirements (the objects and setting the image must show):
{scene}

Reality requirements (what the scientific outcome must look like):
{reality}

Look at the image, then answer with one JSON object and nothing else:
{{"description": "<what the image shows, one or two sentences>",
 "scene score": <0-3: 3 every scene requirement met, 0 none>,
 "reality score": <0-3: 3 the outcome is scientifically right in every detail, 0 wrong or
 absent; 0 whenever the scene score is 0>}}"""
REPLY_TOKENS = 512
MAX_SCORE = 3.0
_FIELDS = {"description": "description", "scenescore": "scene", "realityscore": "reality",
           "realscore": "reality", "overallscore": "overall"}
PLACEHOLDERS = ("{prompt}", "{scene}", "{reality}")


@dataclass(frozen=True)
class RubricVerdict:
    """A parsed reply: ``score`` is the record's score (overall if given, else reality)."""
    description: str
    scene: float | None
    reality: float | None
    overall: float | None
    score: float

    @property
    def score_100(self) -> float:
        return 100.0 * self.score / MAX_SCORE


def rubric_prompt(prompt: str, scene: str, reality: str, template: str | None = None) -> str:
    """The judge's question for one record (``template``: another wording with the same
    placeholders, e.g. the reference's prompt text)."""
    for name, value in (("prompt", prompt), ("scene criteria", scene),
                        ("reality criteria", reality)):
        if not str(value or "").strip():
            raise ScienceT2IError(f"the rubric judge needs the {name}; got an empty one.")
    template = RUBRIC_JUDGE_PROMPT if template is None else template
    missing = [p for p in PLACEHOLDERS if p not in template]
    if missing:
        raise ScienceT2IError(f"the judge prompt template lacks {', '.join(missing)}; it must "
                              "name where the prompt and the two criteria go.")
    return (template.replace("{prompt}", prompt.strip()).replace("{scene}", str(scene).strip())
            .replace("{reality}", str(reality).strip()))


def _key(k: Any) -> str:
    return re.sub(r"[^a-z]", "", str(k).lower())


def _number(v: Any) -> float | None:
    if isinstance(v, dict):   # {"score": 2, "reason": ...}
        v = {_key(k): x for k, x in v.items()}.get("score")
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(?:/\s*\d+(?:\.\d+)?)?\s*", v)
        v = float(m[1]) if m else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _fields(obj: Any, out: dict) -> None:
    """The rubric fields of a reply object and of any object nested in it (the last wins)."""
    if not isinstance(obj, dict):
        return
    for k, v in obj.items():
        name = _FIELDS.get(_key(k))
        if name == "description" and isinstance(v, str):
            out[name] = v
        elif name is not None and name != "description" and _number(v) is not None:
            out[name] = _number(v)
        elif isinstance(v, dict):
            _fields(v, out)


def _score_lines(text: str) -> dict:
    """'Reality score: 2' style lines, for replies without a JSON object."""
    out: dict = {}
    for line in plain_text(text).splitlines():
        m = re.match(r"\s*[-•]?\s*[\"']?(scene|reality|real|overall)[ _]?score[\"']?\s*[:=]\s*"
                     r"([-+]?\d+(?:\.\d+)?)", line, re.I)
        if m:
            out[_FIELDS[m[1].lower() + "score"]] = float(m[2])
    return out


def parse_rubric(text: str) -> Parsed:
    """A judge reply -> Parsed(RubricVerdict) or a failure with its reason."""
    raw = "" if text is None else str(text)
    body = reply_body(raw)
    if not body:
        return failed("empty reply", raw)
    found: dict = {}
    for obj in json_objects(body):
        _fields(obj, found)
    if "reality" not in found and "overall" not in found:
        found = {**_score_lines(body), **found}
    score = found.get("overall", found.get("reality"))
    if score is None:
        return failed("no reality score (nor an overall score) in the reply", raw)
    if not 0 <= score <= MAX_SCORE:
        return failed(f"score {score:g} is outside 0-{MAX_SCORE:g}", raw)
    return Parsed(RubricVerdict(found.get("description", ""), found.get("scene"),
                                found.get("reality"), found.get("overall"), score), "", raw)


def judge_rubric(backend: Any, image: Any, prompt: str, scene: str, reality: str, *,
                 template: str | None = None) -> Parsed:
    """Ask ``backend`` (an LMM backend: local or OpenAI-compatible) about one image."""
    # the backends answer greedily (local) or at temperature 0 (endpoints), as the protocol asks
    text = backend.generate([image, rubric_prompt(prompt, scene, reality, template)],
                            max_new_tokens=REPLY_TOKENS)
    return parse_rubric(text)


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict:
    """Rows of {"score": record score 0-3 or None (a failed reply), "category", "law",
    "id"} -> the benchmark's figures: the mean score out of 100 overall, per category and per
    law, with the counts and the failures listed."""
    groups: dict[str, dict[str, list[float]]] = {"category": defaultdict(list),
                                                 "law": defaultdict(list)}
    scores, failures, n = [], [], 0
    for row in rows:
        n += 1
        if row.get("score") is None:
            failures.append(row.get("id", n - 1))
            continue
        scores.append(float(row["score"]))
        for field in groups:
            if row.get(field) is not None:
                groups[field][str(row[field])].append(float(row["score"]))

    def out_of_100(values: list[float]) -> float | None:
        return round(100.0 * sum(values) / len(values) / MAX_SCORE, 2) if values else None
    return {"score": out_of_100(scores), "records": n, "judged": len(scores),
            "failures": len(failures), "failed": failures,
            **{f"by_{field}": {k: {"score": out_of_100(v), "judged": len(v)}
                               for k, v in sorted(g.items())}
               for field, g in groups.items()}}
