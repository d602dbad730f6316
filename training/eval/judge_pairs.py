"""Science-T2I's LMM baseline: a multimodal judge picks the image that fits the implicit
prompt, asked in both image orders (the reference's eval/eval_lmm.py).

Per order, a record is right when the judge names the explicit image; the reference's
accuracy is the mean of the two orders' accuracies, per task and per category, so a record
contributes 0, 0.5 or 1. The stricter "consistent" rate (right in both orders) is reported
beside it. Replies the parser cannot read count as wrong and are listed with their text.
"""
from __future__ import annotations

from typing import Any, Sequence

from ...nodes import _comfy
from ...nodes.errors import ScienceT2IError
from ...nodes.judges import PROMPT_VERSION, judge_both_orders, judge_pair
from ...nodes.lmm import LMMError
from ..core.datasets import ScienceRecord
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


def _cached_ask(backend: Any, cache: JudgeCache, index: int, prompt: str):
    """One order of a record's pair through the cache: asked A-first, then B-first, as
    ``judge_both_orders`` asks them."""
    orders = iter(("forward", "reverse"))

    def ask(first: Any, second: Any) -> str:
        key = cache_key("pair", index, prompt, next(orders), image_digest(first),
                        image_digest(second), backend.name, PROMPT_VERSION)
        return cache.ask(key, lambda: judge_pair(backend, first.open(), second.open(),
                                                 prompt).text,
                         kind="pair", record=index, judge=backend.name)
    return ask


def judge_pair_accuracy(records: Sequence[ScienceRecord], backend: Any, *,
                        cache: JudgeCache | None = None, strict: bool = False) -> dict:
    """The LMM baseline on ``records`` (explicit_image[0] vs superficial_image[0] for the
    implicit prompt). Judge calls that fail after their retries are listed under
    ``failures`` and left out; a re-run with the same cache asks only those."""
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
                pair = judge_both_orders(backend, explicit, superficial, prompt, strict=strict,
                                         ask=_cached_ask(backend, cache, r.index, prompt))
                for order, parsed in (("forward", pair.forward), ("reverse", pair.reverse)):
                    if not parsed.ok:
                        unparsed.append({"index": r.index, "order": order,
                                         "reason": parsed.reason, "reply": parsed.text})
                # right when the explicit image (A) is chosen, whichever place it had
                verdicts = {"forward": pair.picks[0] == "A", "reverse": pair.picks[1] == "A"}
            except LMMError as exc:
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
