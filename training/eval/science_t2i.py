"""Science-T2I evaluation: reward-model accuracy and the text-to-image metrics ND and RI.

- Reward accuracy (the paper's protocol): for each record, score explicit_image[0] and
  superficial_image[0] against the implicit prompt; correct when the explicit image scores
  strictly higher. Reported overall, per category and per task.
- Text-to-image: every generated image (from the IP, EP or SP of a record) is scored against
  the record's IMPLICIT prompt; means per prompt kind give
  ND = 100 * (IP - SP) / (EP - SP), and between a base run B and a fine-tuned run F
  RI = (F_IP - B_IP) / (B_EP - B_IP).

The scorer is anything with ``.score(images, prompts) -> tensor [B]`` (a SciScoreModel, or a
CLIP baseline loaded the same way), so it can be swapped or faked in tests.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from ...nodes import _comfy
from ...nodes.errors import ScienceT2IError
from ...nodes.sciscore import normalized_difference, relative_improvement
from ..core.datasets import ScienceRecord
from ..core.readers import parse_json, read_text
from .reports import num, pct

log = logging.getLogger(__name__)

KINDS = ("ip", "ep", "sp")


class Scorer(Protocol):
    def score(self, images: Any, prompts: str | Sequence[str]) -> Any: ...


@dataclass
class Tally:
    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total}


def accuracy_table(outcomes: Iterable[tuple[str, str, bool]]) -> dict:
    """Overall / per-category / per-task accuracy from (category, task, correct) triples."""
    overall, cats, tasks = Tally(), {}, {}
    for category, task, ok in outcomes:
        for t in (overall, cats.setdefault(category or "-", Tally()),
                  tasks.setdefault(task or "-", Tally())):
            t.total += 1
            t.correct += int(bool(ok))
    return {"overall": overall.as_dict(),
            "by_category": {k: v.as_dict() for k, v in sorted(cats.items())},
            "by_task": {k: v.as_dict() for k, v in sorted(tasks.items())}}


# ---------------------------------------------------------------- scoring

def _to_image(ref: Any):
    from ...nodes.core import from_pil
    return from_pil(ref.open())


def _scores_list(scores: Any, n: int, what: str) -> list[float]:
    values = [float(v) for v in (scores.tolist() if hasattr(scores, "tolist") else scores)]
    if len(values) != n:
        raise ScienceT2IError(f"the scorer returned {len(values)} scores for {n} {what}.")
    return values


def reward_accuracy(records: Sequence[ScienceRecord], scorer: Scorer,
                    batch_records: int = 8) -> dict:
    """The paper's reward-model accuracy on ``records``, with per-record scores."""
    if not records:
        raise ScienceT2IError("no records to evaluate.")
    for r in records:
        for name, value in (("implicit_prompt", r.implicit_prompts),
                            ("explicit_image", r.explicit_images),
                            ("superficial_image", r.superficial_images)):
            if not value:
                raise ScienceT2IError(f"record {r.index} has no {name}; reward accuracy needs "
                                      "an implicit prompt, an explicit and a superficial image.")
    rows = []
    with _comfy.Progress(len(records), desc="reward accuracy") as bar:
        for start in range(0, len(records), batch_records):
            chunk = records[start:start + batch_records]
            images, prompts = [], []
            for r in chunk:
                images += [_to_image(r.explicit_images[0]), _to_image(r.superficial_images[0])]
                prompts += [r.implicit_prompts[0]] * 2
            scores = _scores_list(scorer.score(images, prompts), len(images), "images")
            for k, r in enumerate(chunk):
                s_exp, s_sup = scores[2 * k], scores[2 * k + 1]
                rows.append({"index": r.index, "task": r.task, "category": r.category,
                             "explicit_score": s_exp, "superficial_score": s_sup,
                             "correct": s_exp > s_sup})
            bar.update(len(chunk))
            _comfy.check_interrupt()
    table = accuracy_table((x["category"], x["task"], x["correct"]) for x in rows)
    table["records"] = rows
    return table


def t2i_summary(rows: Iterable[dict]) -> dict:
    """Mean score per prompt kind and ND, overall and per task.

    ``rows``: {"kind": "ip"|"ep"|"sp", "task": str, "score": float} per generated image.
    """
    sums: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        kind = row["kind"]
        if kind not in KINDS:
            raise ScienceT2IError(f"unknown prompt kind {kind!r}; use one of {KINDS}.")
        for key in ("__all__", row.get("task") or "-"):
            sums.setdefault(key, {k: [] for k in KINDS})[kind].append(float(row["score"]))

    def summarise(groups: dict[str, list[float]]) -> dict:
        means = {k: (sum(v) / len(v) if v else None) for k, v in groups.items()}
        out: dict[str, Any] = {**means, "n": {k: len(v) for k, v in groups.items()}}
        out["nd"] = (normalized_difference(means["ip"], means["ep"], means["sp"])
                     if None not in means.values() else None)
        return out

    if "__all__" not in sums:
        raise ScienceT2IError("no scored images: the run folders hold no images to evaluate.")
    return {"overall": summarise(sums.pop("__all__")),
            "by_task": {k: summarise(v) for k, v in sorted(sums.items())}}


def compare_runs(base: dict, tuned: dict) -> dict:
    """RI of a fine-tuned run over a base run (both ``t2i_summary`` outputs)."""
    def ri(b: dict, f: dict) -> float | None:
        if None in (b.get("ip"), b.get("ep"), f.get("ip")):
            return None
        return relative_improvement(b["ip"], b["ep"], f["ip"])
    return {"overall": ri(base["overall"], tuned["overall"]),
            "by_task": {t: ri(base["by_task"][t], tuned["by_task"][t])
                        for t in tuned["by_task"] if t in base["by_task"]}}


def score_images(items: Sequence[tuple[Path, str]], scorer: Scorer,
                 batch_size: int = 16) -> list[float]:
    """Scores of (image file, prompt) pairs, in batches."""
    from ...nodes.core import from_pil
    from ..core.datasets import ImageRef
    out: list[float] = []
    with _comfy.Progress(len(items), desc="scoring") as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            images = [from_pil(ImageRef(path=p).open()) for p, _ in chunk]
            out += _scores_list(scorer.score(images, [t for _, t in chunk]), len(chunk),
                                "images")
            bar.update(len(chunk))
            _comfy.check_interrupt()
    return out


def reward_markdown(results: dict[str, dict], title: str) -> str:
    """Accuracy (%) tables with one column per model."""
    models = list(results)
    head = "| | " + " | ".join(models) + " |\n|---|" + "---|" * len(models) + "\n"
    lines = [f"# {title}", "", "Accuracy (%) of preferring explicit_image[0] over "
             "superficial_image[0] for the implicit prompt.", "", "## Overall", "", head.rstrip()]
    lines.append("| all | " + " | ".join(
        f"{pct(results[m]['overall']['accuracy'])} ({results[m]['overall']['total']})"
        for m in models) + " |")
    for section, key in (("Per category", "by_category"), ("Per task", "by_task")):
        names = sorted({k for m in models for k in results[m][key]})
        lines += ["", f"## {section}", "", head.rstrip()]
        for n in names:
            cells = []
            for m in models:
                cell = results[m][key].get(n)
                cells.append(f"{pct(cell['accuracy'])} ({cell['total']})" if cell else "-")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def t2i_markdown(runs: dict[str, dict], ri: dict | None, title: str) -> str:
    lines = [f"# {title}", "", "Mean SciScore of images generated from each prompt kind, scored "
             "against the implicit prompt; ND = 100 (IP - SP) / (EP - SP).", ""]
    for name, summary in runs.items():
        lines += [f"## {name}", "", "| task | IP | EP | SP | ND | images |",
                  "|---|---|---|---|---|---|"]
        for label, s in [("all", summary["overall"])] + list(summary["by_task"].items()):
            lines.append(f"| {label} | {num(s['ip'], '{:.3f}')} | {num(s['ep'], '{:.3f}')} | {num(s['sp'], '{:.3f}')} | "
                         f"{num(s['nd'], '{:.1f}')} | {sum(s['n'].values())} |")
        lines.append("")
    if ri is not None:
        lines += ["## Relative improvement", "", "RI = (F_IP - B_IP) / (B_EP - B_IP), in %.",
                  "", "| task | RI (%) |", "|---|---|", f"| all | {pct(ri['overall'])} |"]
        lines += [f"| {t} | {pct(v)} |" for t, v in ri["by_task"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- generated-image runs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_LEADING_INT = re.compile(r"^(\d+)")


def collect_generated(run_dir: Path, records: Sequence[ScienceRecord] | None = None
                      ) -> list[dict]:
    """The images of a text-to-image run with their kind, implicit prompt and task.

    Layout: ``run_dir/{ip,ep,sp}/`` hold the images generated from each prompt kind. Each image
    is tied to its record either by ``run_dir/metadata.jsonl`` (lines of {"file": "ip/x.png",
    "implicit_prompt": ..., "task": ...}) or, with ``records``, by the record index that starts
    its file name (``12.png``, ``0012_1.png``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ScienceT2IError(f"run folder not found: {run_dir}; it must hold ip/, ep/ and "
                              "sp/ folders of generated images.")
    meta: dict[str, dict] = {}
    meta_file = run_dir / "metadata.jsonl"
    if meta_file.is_file():
        for n, line in enumerate(read_text(meta_file, "metadata file").splitlines(), 1):
            if line.strip():
                entry = parse_json(line, meta_file, line=n, fix="fix that line")
                try:
                    meta[Path(entry["file"]).as_posix()] = entry
                except (KeyError, TypeError) as exc:
                    raise ScienceT2IError(f"{meta_file} line {n} is not "
                                          '{"file": ..., "implicit_prompt": ...}.') from exc
    by_index = {r.index: r for r in records} if records else {}
    items = []
    for kind in KINDS:
        folder = run_dir / kind
        if not folder.is_dir():
            raise ScienceT2IError(f"{run_dir} has no {kind}/ folder; put the images generated "
                                  f"from the {kind.upper()} prompts there.")
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            rel = path.relative_to(run_dir).as_posix()
            if rel in meta:
                entry = meta[rel]
                if not entry.get("implicit_prompt"):
                    raise ScienceT2IError(f"metadata for {rel} has no implicit_prompt.")
                items.append({"file": path, "kind": kind, "prompt": entry["implicit_prompt"],
                              "task": entry.get("task", ""), "index": entry.get("index")})
                continue
            m = _LEADING_INT.match(path.stem)
            if not by_index or not m or int(m.group(1)) not in by_index:
                raise ScienceT2IError(
                    f"cannot tell which record {path} belongs to: name it after the record "
                    "index (e.g. 12_0.png) and pass --dataset, or list it in metadata.jsonl.")
            rec = by_index[int(m.group(1))]
            if not rec.implicit_prompts:
                raise ScienceT2IError(f"record {rec.index} has no implicit prompt.")
            items.append({"file": path, "kind": kind, "prompt": rec.implicit_prompts[0],
                          "task": rec.task, "index": rec.index})
    if not items:
        raise ScienceT2IError(f"{run_dir}/ip, ep and sp hold no images.")
    return items


def evaluate_t2i_run(run_dir: Path, scorer: Scorer, records: Sequence[ScienceRecord] | None,
                     batch_size: int = 16) -> tuple[dict, list[dict]]:
    """(t2i_summary, per-image rows) of one run folder."""
    items = collect_generated(run_dir, records)
    scores = score_images([(it["file"], it["prompt"]) for it in items], scorer, batch_size)
    rows = [{"file": str(it["file"]), "kind": it["kind"], "task": it["task"], "score": s}
            for it, s in zip(items, scores)]
    return t2i_summary(rows), rows
