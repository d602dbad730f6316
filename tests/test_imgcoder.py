"""ImgCoder: understand -> plan -> code -> repair with a scripted model (the repair path) and
with a tiny random language model (the plumbing), its nodes called as ComfyUI calls them,
and the batch command whose folder eval-scigen reads."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.imgcoder.draw import draw_figure, extract_code
from science_t2i.nodes.imgcoder.node_classes import ImgCoderNode, RenderFigureCodeNode
from science_t2i.training.cli import main

GOOD = """```python
import numpy as np
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
x = np.linspace(0, 1, 50)
ax.plot(x, x ** 2, color="black")
ax.set_xlabel("x (m)")
```"""
BROKEN = "```python\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot(xs)\n```"
SNEAKY = "```python\nimport os\nimport matplotlib.pyplot as plt\nplt.figure()\n```"


class ScriptedCoder:
    """Replies in order; records every prompt it was sent."""
    name = "scripted:coder"

    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts: list[str] = []

    def generate(self, parts, *, system=None, max_new_tokens=512):
        self.prompts.append(" ".join(p for p in parts if isinstance(p, str)))
        return self.replies.pop(0)


def test_extract_code_takes_the_last_python_block():
    reply = "Plan...\n```\nnot this\n```\n```python\nprint(1)\n```\nthen\n```python\nx = 2\n```"
    assert extract_code(reply) == "x = 2\n"
    assert extract_code("no code here") is None
    assert extract_code("import matplotlib.pyplot as plt\nplt.figure()") is not None
    assert extract_code("<think>hmm</think>I would draw a circle.") is None


def test_repair_path_sends_the_error_back_and_renders_the_fix():
    coder = ScriptedCoder(["## Understanding\nA parabola.\n## Plan\n- axes", BROKEN, GOOD])
    result = draw_figure(coder, "Plot y = x^2 on [0, 1].", image_type="function plot",
                         width=320, height=240, dpi=80, repairs=2)
    assert result.ok and result.attempts == 2
    assert Image.open(__import__("io").BytesIO(result.png)).size == (320, 240)
    assert "Image type: function plot" in coder.prompts[0]
    assert "A parabola." in coder.prompts[1]                  # the plan goes into the code call
    assert "NameError" in coder.prompts[2] and "xs" in coder.prompts[2]   # the error goes back
    assert "ax.plot(xs)" in coder.prompts[2]                  # with the failing script
    assert "x ** 2" in result.code
    assert result.log[-1].startswith("attempt 2: rendered 320x240")


def test_refused_code_is_repaired_without_running_and_repairs_are_bounded():
    coder = ScriptedCoder(["plan", SNEAKY, "still no code", BROKEN])
    result = draw_figure(coder, "Draw anything.", width=200, height=200, repairs=2)
    assert not result.ok and result.attempts == 3
    assert "refused before running" in coder.prompts[2] and "os" in coder.prompts[2]
    assert "no Python code block" in coder.prompts[3]
    assert "NameError" in result.error
    assert not coder.replies                                   # exactly 1 + 1 + 2 calls


def test_tiny_random_language_model_runs_the_loop_end_to_end(tmp_path, monkeypatch):
    """Plumbing through the real local backend: a random model writes no usable code, so the
    loop asks for its repairs and reports the failure instead of raising."""
    from science_t2i.nodes.imgcoder import draw as imgcoder
    from science_t2i.nodes.lmm import LocalBackend

    # a random model never stops by itself: short replies keep the test quick
    monkeypatch.setattr(imgcoder, "PLAN_TOKENS", 24)
    monkeypatch.setattr(imgcoder, "CODE_TOKENS", 24)
    from tiny_llm import build_tiny_llm
    folder = build_tiny_llm(tmp_path / "tiny-llm")
    backend = LocalBackend(str(folder))
    result = draw_figure(backend, "Draw a triangle ABC with angle A = 30 degrees.",
                         width=128, height=128, repairs=1)
    assert not result.ok and result.attempts == 2
    assert result.plan                                        # the model's (random) plan
    assert "no Python code block" in result.error


def test_imgcoder_node_as_comfyui_calls_it():
    node = ImgCoderNode()
    coder = ScriptedCoder(["plan text", GOOD])
    out = getattr(node, ImgCoderNode.FUNCTION)(model=coder, prompt="Plot y = x^2.",
                                               image_type="function plot", width=256,
                                               height=192, dpi=64, repairs=1)
    image, plan, code, log = out["result"]
    assert tuple(image.shape) == (1, 192, 256, 3) and image.dtype.is_floating_point
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert float(image.std()) > 0                             # something was drawn
    assert plan == "plan text" and "x ** 2" in code and "rendered 256x192" in log
    failing = ScriptedCoder(["plan", BROKEN])
    with pytest.raises(ScienceT2IError, match="after 1 attempt.*NameError"):
        node.draw(failing, "Plot.", "", 128, 128, 64, 0)


def test_render_figure_code_node_renders_and_refuses():
    node = RenderFigureCodeNode()
    defaults = {k: v[1]["default"] for k, v in node.INPUT_TYPES()["required"].items()}
    image, log = node.render(**{**defaults, "width": 200, "height": 100})
    assert tuple(image.shape) == (1, 100, 200, 3) and "rendered 200x100" in log
    with pytest.raises(ScienceT2IError, match="refused before running"):
        node.render("import socket\n", 64, 64, 64)
    with pytest.raises(ScienceT2IError, match="failed in the sandbox"):
        node.render("import matplotlib.pyplot as plt\n1/0\n", 64, 64, 64)


def test_cli_batch_resumes_and_eval_scigen_reads_its_folder(tmp_path, monkeypatch, capsys):
    import science_t2i.nodes.lmm as jb
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(json.dumps(r) for r in [
        {"id": "p1", "question": "Plot y = x^2.", "image_type": "Plot",
         "multimodal_question": "Which curve?\nA. line\nB. parabola", "answer": "B"},
        {"id": "p2", "question": "Draw a circuit.", "image_type": "Circuit",
         "multimodal_question": "How many resistors?", "answer": "2"},
    ]) + "\n")
    coder = ScriptedCoder(["plan 1", GOOD, "plan 2", "no code", BROKEN])
    monkeypatch.setattr(jb, "backend_from_spec", lambda spec, **kw: coder)
    out = tmp_path / "figs"
    args = ["imgcoder", "--prompts", str(problems), "--out", str(out), "--model", "local:x",
            "--width", "160", "--height", "120", "--repairs", "1"]
    assert main(args) == 0
    assert "1 drawn, 1 failed" in capsys.readouterr().out
    assert (out / "p1.png").is_file() and not (out / "p2.png").exists()
    assert "ax.plot(xs)" in (out / "codes" / "p2.py").read_text()
    log = [json.loads(line) for line in (out / "imgcoder.jsonl").read_text().splitlines()]
    assert [(e["id"], e["ok"], e["attempts"]) for e in log] == [("p1", True, 1),
                                                               ("p2", False, 2)]
    coder.replies = ["plan 2", GOOD]                         # the re-run only tries p2
    assert main(args) == 0
    assert "1 drawn, 0 failed, 1 already there" in capsys.readouterr().out
    assert not coder.replies

    class Judge:
        name = "scripted:judge"

        def generate(self, parts, **kw):
            text = " ".join(p for p in parts if isinstance(p, str))
            if "Rate it from 0" in text:
                return '{"Correctness_Fidelity": 2, "Layout_Precision": 2, ' \
                       '"Readability_Occlusion": 2, "Scientific_Plausibility": 2, ' \
                       '"Expressiveness_Richness": 1}'
            return "Answer: B" if "Which curve" in text else "Answer: 3"

    monkeypatch.setattr(jb, "backend_from_spec", lambda spec, **kw: Judge())
    assert main(["eval-scigen", "--records", str(problems), "--images", str(out), "--judge",
                 "local:j", "--metrics", "quiz,judge", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "scigen_eval.json").read_text())
    overall = report["sets"]["figs"]["overall"]
    assert overall["r_inv"] == pytest.approx(1 / 2) and overall["missing"] == 0
    assert overall["judge"]["Expressiveness_Richness"] == pytest.approx(1.0)
    assert np.isclose(overall["judge_mean"], 9 / 5)


def test_cancel_stops_a_running_render_at_once(comfy):
    """ComfyUI's Cancel while the sandbox runs a busy loop: the child is killed and the node
    raises ComfyUI's interrupt (the 20 s CPU limit would have raised the node's own error)."""
    import threading

    from comfy_stub import InterruptProcessingException
    node = RenderFigureCodeNode()
    timer = threading.Timer(0.5, lambda: setattr(comfy, "interrupt", True))
    timer.start()
    try:
        with pytest.raises(InterruptProcessingException):
            node.render("import matplotlib.pyplot as plt\nx = 0\nwhile True:\n    x += 1\n",
                        128, 128, 64)
    finally:
        timer.cancel()
    assert not comfy.interrupt                       # the interrupt was consumed by raising
    image, _ = node.render("import matplotlib.pyplot as plt\nplt.figure()\n", 64, 64, 64)
    assert tuple(image.shape) == (1, 64, 64, 3)      # the next render works
