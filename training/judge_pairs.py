"""Science-T2I's LMM baseline: a multimodal judge picks the image that fits the implicit
prompt, asked in both image orders (the reference's eval/eval_lmm.py).

Per order, a record is right when the judge names the explicit image; the reference's
accuracy is the mean of the two orders' accuracies, per task and per category, so a record
contributes 0, 0.5 or 1. The stricter "consistent" rate (right in both orders) is reported
beside it. Replies the parser cannot read count as wrong and are listed with their text.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..nodes import _comfy
from ..nodes.errors import ScienceT2IError
from ..nodes.judge import PROMPT_VERSION, judge_pair
from ..nodes.judge_backends import JudgeError
from .datasets import ScienceRecord
from .judge_cache import JudgeCache, cache_key, image_digest


def both_orders_table(rows: Sequence[dict]) -> dict:
    """Accuracy (the reference's two-order mean) and the consistent rate, overall, per
    category and per task, from rows with ``forward`` / ``reverse`` correctness."""
    def cell(group: list[dict]) -> dict:
        n = len(group)
        fwd = sum(r["forward"] for r in group)
        rev = sum(r["reverse"] for r in group)
        return {"accuracy": (fwd + rev) / (2 * n) if n else float("nan"),
                "correct": (fwd + rev) / 2, "total": n,
                "forward_accuracy": fwd / n if n else float("nan"),
                "reverse_accuracy": rev / n if n else float("nan"),
                "consistent": sum(r["forward"] and r["reverse"] for r in group) / n
                if n else float("nan")}

    def by(key: str) -> dict:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r[key] or "-", []).append(r)
        return {k: cell(v) for k, v in sorted(groups.items())}

    return {"overall": cell(list(rows)), "by_category": by("category"), "by_task": by("task")}


def judge_pair_accuracy(records: Sequence[ScienceRecord], backend: Any, *,
                        cache: JudgeCache | None = None, strict: bool = False) -> dict:
    """The LMM baseline on ``records`` (explicit_image[0] vs superficial_image[0] for the
    implicit prompt). Judge calls that fail after their retries are listed under
    ``failures`` and left out; a re-run with the same cache asks only those."""
    from ..nodes.judge import strict_pair_choice
    from ..nodes.judge_answers import parse_pair_choice
    cache = cache if cache is not None else JudgeCache(None)
    rows, failures, unparsed = [], [], []
    with _comfy.Progress(len(records), desc=f"judge {backend.name}") as bar:
        for r in records:
            if not (r.implicit_prompts and r.explicit_images and r.superficial_images):
                raise ScienceT2IError(f"record {r.index} needs an implicit prompt, an explicit "
                                      "and a superficial image for the judge.")
            prompt = r.implicit_prompts[0]
            explicit, superficial = r.explicit_images[0], r.superficial_images[0]
            try:
                verdicts = {}
                for order, (a, b, right) in {"forward": (explicit, superficial, 1),
                                             "reverse": (superficial, explicit, 2)}.items():
                    key = cache_key("pair", r.index, prompt, order, image_digest(a),
                                    image_digest(b), backend.name, PROMPT_VERSION)
                    reply = cache.ask(
                        key, lambda a=a, b=b: judge_pair(backend, a.open(), b.open(),
                                                         prompt).text,
                        kind="pair", record=r.index, judge=backend.name)
                    parsed = strict_pair_choice(reply) if strict else parse_pair_choice(reply)
                    if not parsed.ok:
                        unparsed.append({"index": r.index, "order": order,
                                         "reason": parsed.reason, "reply": reply})
                    verdicts[order] = parsed.ok and parsed.value == right
            except JudgeError as exc:
                failures.append({"index": r.index, "error": str(exc)})
                continue
            finally:
                bar.update(1)
                _comfy.check_interrupt()
            rows.append({"index": r.index, "task": r.task, "category": r.category, **verdicts})
    if not rows:
        raise ScienceT2IError(f"the judge {backend.name} answered no record; first error: "
                              f"{failures[0]['error'] if failures else '-'}")
    table = both_orders_table(rows)
    table.update(records=rows, failures=failures, unparseable=unparsed,
                 rule="strict" if strict else "robust")
    return table

