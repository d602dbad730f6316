"""Evaluation: reward accuracy, ND and RI, the report files, and both CLI commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.cli import main
from science_t2i.training.core.datasets import load_records, write_jsonl_dataset
from science_t2i.training.eval.science_t2i import (accuracy_table, collect_generated, compare_runs,
                                                   normalized_difference, relative_improvement,
                                                   reward_accuracy, t2i_summary)
from tiny_clip import build_tiny_clip, random_uint8_images, reference_sciscore


def _solid(r, g, b, size=8):
    return Image.new("RGB", (size, size), (r, g, b))


class RedScorer:
    """Score = mean red value (0..255) of the image; prompts are ignored."""

    def __init__(self):
        self.calls = []

    def score(self, images, prompts):
        self.calls.append((len(images), list(prompts)))
        return torch.tensor([float(img[..., 0].mean()) * 255 for img in images])


def test_nd_and_ri_match_hand_computation():
    assert normalized_difference(21.0, 26.0, 19.0) == pytest.approx(200 / 7)  # 28.571...
    assert normalized_difference(1.0, 2.0, 2.0) is None
    assert relative_improvement(21.0, 26.0, 24.0) == pytest.approx(0.6)
    assert relative_improvement(3.0, 3.0, 4.0) is None
    rows = ([{"kind": "ip", "task": "RI", "score": s} for s in (20.0, 22.0)]
            + [{"kind": "ep", "task": "RI", "score": s} for s in (25.0, 27.0)]
            + [{"kind": "sp", "task": "RI", "score": s} for s in (18.0, 20.0)]
            + [{"kind": "ip", "task": "EL", "score": 10.0},
               {"kind": "ep", "task": "EL", "score": 14.0},
               {"kind": "sp", "task": "EL", "score": 9.0}])
    s = t2i_summary(rows)
    # RI task: IP 21, EP 26, SP 19 -> ND 200/7; EL: IP 10, EP 14, SP 9 -> ND 20
    assert (s["by_task"]["RI"]["ip"], s["by_task"]["RI"]["ep"], s["by_task"]["RI"]["sp"]) == \
        (21.0, 26.0, 19.0)
    assert s["by_task"]["RI"]["nd"] == pytest.approx(28.5714286)
    assert s["by_task"]["EL"]["nd"] == pytest.approx(20.0)
    # overall: IP (20+22+10)/3 = 52/3, EP 66/3, SP 47/3 -> ND = 100 * 5 / 19
    assert s["overall"]["ip"] == pytest.approx(52 / 3)
    assert s["overall"]["nd"] == pytest.approx(500 / 19)
    assert s["overall"]["n"] == {"ip": 3, "ep": 3, "sp": 3}
    tuned = t2i_summary([{**r, "score": r["score"] + (3.0 if r["kind"] == "ip" else 0.0)}
                         for r in rows])
    ri = compare_runs(s, tuned)
    assert ri["by_task"]["RI"] == pytest.approx(3 / 5)      # (24 - 21) / (26 - 21)
    assert ri["by_task"]["EL"] == pytest.approx(3 / 4)      # (13 - 10) / (14 - 10)
    assert ri["overall"] == pytest.approx(3 / (66 / 3 - 52 / 3))
    with pytest.raises(ScienceT2IError, match="unknown prompt kind"):
        t2i_summary([{"kind": "xp", "task": "", "score": 1.0}])


def _known_dataset(folder):
    """Five records whose outcome under RedScorer is known: 3 correct (one of them with the
    explicit image winning by 1), one wrong, one tie (a tie counts as wrong, as in the paper's
    code, which needs prob_0 > prob_1)."""
    spec = [("RI", "biology", 200, 100), ("RI", "biology", 50, 150), ("EL", "physics", 90, 89),
            ("GR", "physics", 120, 120), ("EL", "physics", 255, 0)]
    rows = [{"implicit_prompt": [f"prompt {i}", "other"], "explicit_prompt": "e",
             "superficial_prompt": "s", "explicit_image": [_solid(e, 0, 0), _solid(0, 0, 0)],
             "superficial_image": [_solid(s, 0, 0)], "category": c, "law": t}
            for i, (t, c, e, s) in enumerate(spec)]
    write_jsonl_dataset(rows, folder)
    return load_records(folder)


def test_reward_accuracy_on_a_known_fixture(tmp_path):
    records = _known_dataset(tmp_path / "ds")
    scorer = RedScorer()
    res = reward_accuracy(records, scorer, batch_records=2)
    assert res["overall"] == {"accuracy": 3 / 5, "correct": 3, "total": 5}
    assert res["by_task"]["RI"]["accuracy"] == 1 / 2
    assert res["by_task"]["EL"]["accuracy"] == 2 / 2
    assert res["by_task"]["GR"]["accuracy"] == 0 / 1
    assert res["by_category"]["biology"]["correct"] == 1
    assert res["by_category"]["physics"] == {"accuracy": 2 / 3, "correct": 2, "total": 3}
    # only explicit_image[0] and superficial_image[0], against implicit_prompt[0]
    assert [n for n, _ in scorer.calls] == [4, 4, 2]
    assert scorer.calls[0][1] == ["prompt 0", "prompt 0", "prompt 1", "prompt 1"]
    assert res["records"][2]["explicit_score"] == pytest.approx(90.0)
    assert accuracy_table([])["overall"]["total"] == 0


def test_reward_accuracy_needs_both_images(tmp_path):
    write_jsonl_dataset([{"implicit_prompt": "p", "explicit_image": _solid(1, 2, 3)}],
                        tmp_path / "ds")
    records = load_records(tmp_path / "ds")
    with pytest.raises(ScienceT2IError, match="record 0 has no superficial_image"):
        reward_accuracy(records, RedScorer())


def _images(n, seed):
    batch = random_uint8_images(n, 32, 32, seed=seed)
    return [Image.fromarray((b.numpy() * 255).round().astype(np.uint8)) for b in batch]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_tiny_clip(root / "sciscore" / "tiny-a", image_size=32, seed=3)
    build_tiny_clip(root / "sciscore" / "tiny-b", image_size=32, seed=4)
    return root


def test_eval_reward_cli_matches_reference_scores(tmp_path, tiny_models, capsys):
    exp, sup = _images(6, seed=11), _images(6, seed=12)
    tasks = ["RI", "RI", "EL", "GR", "EL", "SC"]
    prompts = ["an unripe apple", "a green apple on a table", "a glass of water",
               "ice on the table", "a red apple", "frozen water"]
    rows = [{"implicit_prompt": p, "explicit_image": [e], "superficial_image": [s],
             "category": "biology" if t in ("RI", "SC") else "physics", "law": t}
            for p, e, s, t in zip(prompts, exp, sup, tasks)]
    write_jsonl_dataset(rows, tmp_path / "ds")
    out = tmp_path / "out"
    rc = main(["--models-dir", str(tiny_models), "eval-reward", "--dataset",
               str(tmp_path / "ds"), "--model", "tiny-a", "--model", "tiny-b",
               "--out", str(out), "--device", "cpu", "--batch-size", "4"])
    assert rc == 0
    data = json.loads((out / "reward_accuracy.json").read_text())
    for name in ("tiny-a", "tiny-b"):
        # the paper's evaluation, computed independently with transformers' own processor
        folder = tiny_models / "sciscore" / name
        correct = []
        for p, e, s in zip(prompts, exp, sup):
            ref = reference_sciscore(folder, [e, s], [p, p])
            correct.append(bool(ref[0] > ref[1]))
        res = data["models"][name]
        assert res["overall"]["correct"] == sum(correct)
        assert res["overall"]["accuracy"] == pytest.approx(sum(correct) / 6)
        for task in set(tasks):
            idx = [i for i, t in enumerate(tasks) if t == task]
            assert res["by_task"][task]["accuracy"] == pytest.approx(
                sum(correct[i] for i in idx) / len(idx))
    md = (out / "reward_accuracy.md").read_text()
    assert "| tiny-a | tiny-b |" in md and "## Per task" in md
    png = Image.open(out / "reward_accuracy_per_task.png")
    assert png.format == "PNG" and png.size[0] > 100
    assert "Per category" in capsys.readouterr().out


def test_eval_reward_cli_bad_dataset(tmp_path, tiny_models, capsys):
    write_jsonl_dataset([{"implicit_prompt": "p", "explicit_image": _solid(1, 2, 3)}],
                        tmp_path / "ds")
    rc = main(["--models-dir", str(tiny_models), "eval-reward", "--dataset",
               str(tmp_path / "ds"), "--model", "tiny-a", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "record 0 is missing the required field 'superficial_image'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _run_folder(root, images_per_kind, names):
    for kind, imgs in images_per_kind.items():
        (root / kind).mkdir(parents=True)
        for img, name in zip(imgs, names):
            img.save(root / kind / name)


def test_eval_t2i_cli_nd_and_ri(tmp_path, tiny_models):
    prompts = ["an unripe apple", "a glass of water in a freezer"]
    rows = [{"implicit_prompt": [p], "law": t} for p, t in zip(prompts, ["RI", "SO"])]
    write_jsonl_dataset(rows, tmp_path / "ds")
    names = ["0_0.png", "1_0.png"]
    base = {k: _images(2, seed=20 + i) for i, k in enumerate(("ip", "ep", "sp"))}
    tuned = {"ip": _images(2, seed=30), "ep": base["ep"], "sp": base["sp"]}
    _run_folder(tmp_path / "base", base, names)
    _run_folder(tmp_path / "tuned", tuned, names)
    out = tmp_path / "out"
    rc = main(["--models-dir", str(tiny_models), "eval-t2i", str(tmp_path / "tuned"),
               "--base", str(tmp_path / "base"), "--dataset", str(tmp_path / "ds"),
               "--model", "tiny-a", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    data = json.loads((out / "t2i_eval.json").read_text())
    folder = tiny_models / "sciscore" / "tiny-a"

    def mean(imgs):  # every image against its record's IMPLICIT prompt
        return float(reference_sciscore(folder, imgs, prompts).mean())

    b = {k: mean(v) for k, v in base.items()}
    f_ip = mean(tuned["ip"])
    got = data["runs"]["base"]["overall"]
    for k in ("ip", "ep", "sp"):
        assert got[k] == pytest.approx(b[k], abs=1e-3)
    assert got["nd"] == pytest.approx(100 * (b["ip"] - b["sp"]) / (b["ep"] - b["sp"]),
                                      rel=1e-3)
    assert data["runs"]["run"]["overall"]["ip"] == pytest.approx(f_ip, abs=1e-3)
    assert data["relative_improvement"]["overall"] == pytest.approx(
        (f_ip - b["ip"]) / (b["ep"] - b["ip"]), rel=1e-3)
    assert set(data["runs"]["run"]["by_task"]) == {"RI", "SO"}
    md = (out / "t2i_eval.md").read_text()
    assert "## Relative improvement" in md and "| RI |" in md
    assert Image.open(out / "t2i_eval_per_task.png").format == "PNG"


def test_generated_run_layouts_and_errors(tmp_path):
    (tmp_path / "run" / "ip").mkdir(parents=True)
    for k in ("ep", "sp"):
        (tmp_path / "run" / k).mkdir()
    for k in ("ip", "ep", "sp"):
        _solid(1, 2, 3).save(tmp_path / "run" / k / "a.png")
    with pytest.raises(ScienceT2IError, match="cannot tell which record"):
        collect_generated(tmp_path / "run")
    meta = [{"file": f"{k}/a.png", "implicit_prompt": "an unripe pear", "task": "RI"}
            for k in ("ip", "ep", "sp")]
    (tmp_path / "run" / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta))
    items = collect_generated(tmp_path / "run")
    assert [(i["kind"], i["prompt"], i["task"]) for i in items] == [
        (k, "an unripe pear", "RI") for k in ("ip", "ep", "sp")]
    (tmp_path / "run2" / "ip").mkdir(parents=True)
    with pytest.raises(ScienceT2IError, match="no ep/ folder"):
        collect_generated(tmp_path / "run2")
    with pytest.raises(ScienceT2IError, match="run folder not found"):
        collect_generated(tmp_path / "nope")
