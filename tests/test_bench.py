"""``science-t2i bench`` on tiny models: a FLUX run generated with fixed seeds and resumed
(a missing image comes back byte for byte, nothing done is redone), scored by SciScore and by
a local rubric judge, reported and ranked beside another run."""
from __future__ import annotations

import json

import pytest
from science_t2i.training.cli import main
from tiny_clip import build_tiny_clip
from tiny_flux import build_tiny_flux_pipeline
from tiny_vlm import build_tiny_qwen2_vl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dataset(folder):
    from science_t2i.training.core.datasets import write_jsonl_dataset
    rows = [{"implicit_prompt": ["an unripe apple"], "explicit_prompt": "a green apple",
             "superficial_prompt": "a red apple", "category": "biology", "law": "RI",
             "scene_scoring": "an apple", "real_scoring": "the apple is green"},
            {"implicit_prompt": ["butter on a hot pan"], "explicit_prompt": "melting butter",
             "superficial_prompt": "a solid butter stick", "category": "physics",
             "law": "ME", "scene_scoring": "butter, a pan", "real_scoring": "melting"}]
    write_jsonl_dataset(rows, folder)
    return folder


def test_bench_generates_resumes_judges_and_ranks(tmp_path, capsys):
    flux = tmp_path / "flux"
    build_tiny_flux_pipeline(flux)
    models = tmp_path / "models"
    build_tiny_clip(models / "sciscore" / "tiny", image_size=32, seed=3)
    vlm = build_tiny_qwen2_vl(models / "vlm" / "tiny-qwen2-vl")
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "a"
    common = ["--models-dir", str(models), "bench", "--dataset", str(ds), "--model", "tiny",
              "--judge", f"local:{vlm}", "--concurrency", "1", "--device", "cpu"]
    args = common + ["--flux", str(flux), "--steps", "2", "--resolution", "32",
                     "--out", str(out), "--name", "tiny-a"]
    assert main(args) == 0, capsys.readouterr().err
    images = sorted(p.relative_to(out / "images").as_posix()
                    for p in (out / "images").rglob("*.png"))
    assert images == [f"{k}/{i}_0.png" for k in ("ep", "ip", "sp") for i in (0, 1)]
    data = json.loads((out / "bench.json").read_text())
    assert data["generated"] == {"planned": 6, "generated": 6, "kept": 0}
    assert data["generation"]["steps"] == 2 and data["generation"]["guidance"] == 4.0
    assert set(data["sciscore"]["overall"]) >= {"ip", "ep", "sp", "nd"}
    rubric = data["rubric"]
    assert sum(k["judged"] for k in rubric["kinds"].values()) + len(rubric["failures"]) == 6

    # resume: a lost image comes back identical; the others and the judge replies are kept
    lost = out / "images" / "ep" / "1_0.png"
    before = lost.read_bytes()
    lost.unlink()
    cache_lines = len((out / "rubric_cache.jsonl").read_text().splitlines())
    assert main(args) == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["generated"] == {"planned": 6, "generated": 1, "kept": 5}
    assert lost.read_bytes() == before
    # only the regenerated image (same bytes, same key) would be asked again: nothing new
    assert len((out / "rubric_cache.jsonl").read_text().splitlines()) == cache_lines

    # a second run from the same images, ranked beside the first
    out_b = tmp_path / "b"
    assert main(common + ["--images", str(out / "images"), "--out", str(out_b), "--name",
                          "tiny-b", "--compare", str(out)]) == 0
    board = json.loads((out_b / "leaderboard.json").read_text())["rows"]
    assert {r["name"] for r in board} == {"tiny-a", "tiny-b"}
    assert "| tiny-a |" in (out_b / "leaderboard.md").read_text()


def test_bench_bad_input_is_refused_before_any_work(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "o"
    assert main(["bench", "--dataset", str(ds), "--out", str(out)]) == 2
    assert "give --flux" in capsys.readouterr().err
    assert main(["bench", "--dataset", str(ds), "--images", str(tmp_path), "--no-sciscore",
                 "--out", str(out)]) == 2
    assert "--no-sciscore leaves nothing" in capsys.readouterr().err
    assert main(["bench", "--dataset", str(ds), "--images", str(tmp_path), "--compare",
                 str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no bench.json there" in capsys.readouterr().err
