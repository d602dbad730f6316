"""The Science-T2I benchmark's report: one run's figures (the rubric judge's scores out of 100
per prompt kind with the explicit-implicit gap, SciScore's means and ND beside them) as JSON
and Markdown, and several runs side by side as one leaderboard table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ...nodes.errors import ScienceT2IError
from ..core.readers import parse_json, read_text
from .rubric_runs import rubric_markdown

REPORT = "bench.json"


def _cell(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def leaderboard_row(name: str, data: dict) -> dict:
    rubric = data.get("rubric") or {}
    kinds = rubric.get("kinds", {})
    sciscore = (data.get("sciscore") or {}).get("overall", {})
    return {"name": name,
            **{k: kinds.get(k, {}).get("score") for k in ("implicit", "explicit", "superficial")},
            "gap": rubric.get("gap"), "failures": len(rubric.get("failures", [])),
            "sciscore_ip": sciscore.get("ip"), "nd": sciscore.get("nd")}


def leaderboard_markdown(rows: Sequence[dict]) -> str:
    lines = ["| run | implicit | explicit | superficial | gap | judge failures | SciScore IP "
             "| ND |", "|---|---|---|---|---|---|---|---|"]
    order = sorted(rows, key=lambda r: -(r["implicit"] if r["implicit"] is not None else -1))
    for r in order:
        lines.append(f"| {r['name']} | {_cell(r['implicit'])} | {_cell(r['explicit'])} | "
                     f"{_cell(r['superficial'])} | {_cell(r['gap'])} | {r['failures']} | "
                     f"{_cell(r['sciscore_ip'], '{:.3f}')} | {_cell(r['nd'])} |")
    return "\n".join(lines) + "\n"


def read_report(folder: str | Path) -> dict:
    path = Path(folder) / REPORT
    if not path.is_file():
        raise ScienceT2IError(f"--compare {folder}: no {REPORT} there; give the --out folder "
                              "of an earlier `science-t2i bench`.")
    data = parse_json(read_text(path, "benchmark report"), path, fix="run the benchmark again")
    if not isinstance(data, dict):
        raise ScienceT2IError(f"{path} is not a benchmark report.")
    return data


def bench_markdown(name: str, data: dict) -> str:
    lines = [f"## Science-T2I benchmark: {name}", ""]
    settings = data.get("generation")
    if settings:
        lines += ["generation: " + ", ".join(f"{k} {v}" for k, v in settings.items()
                                             if not isinstance(v, (dict, list))), ""]
    if data.get("rubric"):
        lines.append(rubric_markdown(data["rubric"]))
    elif data.get("rubric_skipped"):
        lines += [data["rubric_skipped"] + ".", ""]
    sci = data.get("sciscore")
    if sci:
        o = sci["overall"]
        lines += ["### SciScore", "", "| IP | EP | SP | ND |", "|---|---|---|---|",
                  f"| {_cell(o.get('ip'), '{:.3f}')} | {_cell(o.get('ep'), '{:.3f}')} | "
                  f"{_cell(o.get('sp'), '{:.3f}')} | {_cell(o.get('nd'))} |", ""]
    return "\n".join(lines) + "\n"


def rubric_chart(data: dict, title: str) -> bytes | None:
    from .reports import bar_chart_png, charts_available
    rubric = data.get("rubric")
    if not rubric or not charts_available():
        return None
    groups = {kind: {law: cell["score"] for law, cell in rep["by_law"].items()}
              for kind, rep in rubric["kinds"].items()}
    return bar_chart_png(groups, title, "score out of 100")
