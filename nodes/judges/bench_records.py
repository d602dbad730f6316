"""A handful of Science-T2I benchmark records for a graph to generate and judge: read from a
JSON / JSONL file in the test sets' layout (``implicit_prompt``, ``explicit_prompt``,
``superficial_prompt``, ``scene_scoring``, ``real_scoring``, ``category``, ``law``), or the
pack's own sample of six (``bench_sample.jsonl``, written for the pack in that layout).

The headless benchmark (``science-t2i bench``) reads whole test sets in every layout; this
reader serves the nodes, which cannot use the training package."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import _comfy
from ..errors import ScienceT2IError

SAMPLE = Path(__file__).with_name("bench_sample.jsonl")
KINDS = {"implicit": "implicit_prompt", "explicit": "explicit_prompt",
         "superficial": "superficial_prompt"}


@dataclass(frozen=True)
class BenchRecord:
    index: int
    prompt: str
    scene: str
    reality: str
    category: str
    law: str

    @property
    def label(self) -> str:
        return f"#{self.index} {self.category}/{self.law}"


def _first(value) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "").strip()


def _rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except ValueError as exc:
        raise ScienceT2IError(f"{path} is not valid JSON{' lines' if path.suffix == '.jsonl' else ''}"
                              f" ({exc}); export the test set as .json or .jsonl.") from None
    rows = data.get("records", data.get("data")) if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ScienceT2IError(f"{path} holds no list of records (objects with "
                              "implicit_prompt, scene_scoring, real_scoring, ...).")
    return rows


def resolve_records_file(name: str) -> Path:
    """'' -> the pack's sample; else an absolute path or one under ComfyUI's input folder."""
    if not name.strip():
        return SAMPLE
    path = Path(name.strip()).expanduser()
    if not path.is_absolute():
        path = _comfy.input_directory() / path
    if not path.is_file() or path.suffix not in (".json", ".jsonl"):
        raise ScienceT2IError(f"records file {name!r} not found as a .json/.jsonl file "
                              f"(looked at {path}); put it in ComfyUI's input folder or give "
                              "its full path, or leave it empty for the pack's sample.")
    return path


def load_bench_records(name: str, kind: str, start: int, count: int) -> list[BenchRecord]:
    """Records start..start+count-1 of the file, with the prompt of ``kind``; each must have
    that prompt and both rubric fields."""
    if kind not in KINDS:
        raise ScienceT2IError(f"prompt kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    path = resolve_records_file(name)
    rows = _rows(path)
    if start >= len(rows):
        raise ScienceT2IError(f"{path.name} has {len(rows)} records; start {start} is past "
                              "the end.")
    out = []
    for i in range(start, min(start + count, len(rows))):
        r = rows[i]
        rec = BenchRecord(i, _first(r.get(KINDS[kind])), _first(r.get("scene_scoring")),
                          _first(r.get("real_scoring")), _first(r.get("category")) or "-",
                          _first(r.get("law", r.get("task"))) or "-")
        missing = [f for f, v in ((KINDS[kind], rec.prompt), ("scene_scoring", rec.scene),
                                  ("real_scoring", rec.reality)) if not v]
        if missing:
            raise ScienceT2IError(f"record {i} of {path.name} has no {', '.join(missing)}; the "
                                  "benchmark needs the test set's rubric fields (the trainset "
                                  "has none).")
        out.append(rec)
    return out
