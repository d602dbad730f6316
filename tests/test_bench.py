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


# ----------------------------------------------------------------------------- ComfyUI servers

def _png_grey(path) -> float:
    import numpy as np
    from PIL import Image
    return float(np.asarray(Image.open(path).convert("L"))[0, 0]) / 255


def test_bench_generates_through_comfyui_servers_and_resumes(tmp_path, capsys):
    """The shipped bench workflow on two (stub) ComfyUI servers: each image's prompt, seed and
    size are written into the named nodes, both servers work, every image is the one its
    prompt and seed draw; a lost image is asked for again and nothing else; a server that
    rejects the graph fails the run with its reason and loses nothing already made."""
    from fake_comfy import FakeComfy, image_value
    from science_t2i.training.core.seeds import seed_for
    models = tmp_path / "models"
    build_tiny_clip(models / "sciscore" / "tiny", image_size=32, seed=3)
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "c"
    with FakeComfy(polls_before_done=2) as a, FakeComfy(polls_before_done=2) as b:
        args = ["--models-dir", str(models), "bench", "--dataset", str(ds), "--model", "tiny",
                "--device", "cpu", "--comfy", a.url, b.url, "--resolution", "24",
                "--samples", "2", "--seed", "5", "--out", str(out)]
        assert main(args) == 0, capsys.readouterr().err
        graphs = a.received + b.received
    assert len(graphs) == 12 and a.received and b.received
    prompts = {"ip": ["an unripe apple", "butter on a hot pan"],
               "ep": ["a green apple", "melting butter"],
               "sp": ["a red apple", "a solid butter stick"]}
    seen = set()
    for g in graphs:   # the shipped workflow: 4 prompt, 6 size, 7 sampler (seed)
        assert g["6"]["inputs"]["width"] == g["6"]["inputs"]["height"] == 24
        assert g["6"]["inputs"]["batch_size"] == 1 and g["7"]["inputs"]["steps"] == 4
        seen.add((g["4"]["inputs"]["text"], g["7"]["inputs"]["seed"]))
    expected = {}
    for code, kind in enumerate(("ip", "ep", "sp")):
        for i in (0, 1):
            for k in (0, 1):
                seed = seed_for(5, i, code, k)
                expected[f"{kind}/{i}_{k}.png"] = image_value(prompts[kind][i], seed)
                assert (prompts[kind][i], seed) in seen
    for name, value in expected.items():
        assert _png_grey(out / "images" / name) == pytest.approx(value, abs=1e-6), name
    data = json.loads((out / "bench.json").read_text())
    assert data["generated"] == {"planned": 12, "generated": 12, "kept": 0}
    assert data["generation"]["comfyui"] == [a.url, b.url] and data["name"] == "bench_generate"
    assert set(data["sciscore"]["overall"]) >= {"ip", "ep", "sp", "nd"}

    lost = out / "images" / "sp" / "1_1.png"
    lost.unlink()
    (out / "images" / "ip" / "0_0.png").unlink()
    with FakeComfy(mode="reject") as bad:
        args[args.index(a.url):args.index(b.url) + 1] = [bad.url]
        assert main(args) == 2
        assert "rejected the graph (HTTP 400)" in capsys.readouterr().err
    assert len(list((out / "images").rglob("*.png"))) == 10     # nothing made was lost
    with FakeComfy() as good:
        args[args.index(bad.url)] = good.url
        assert main(args + ["--generate-only"]) == 0
        assert len(good.received) == 2                            # only the two lost images
    assert _png_grey(lost) == pytest.approx(expected["sp/1_1.png"], abs=1e-6)


def test_bench_comfy_workflow_checks_come_before_any_request(tmp_path, capsys):
    from fake_comfy import FakeComfy
    ds = _dataset(tmp_path / "ds")
    graph = json.loads((_workflows() / "bench_generate.json").read_text())
    for node in graph.values():
        node.pop("_meta")            # an export without titles: nodes are named by id
    wf = tmp_path / "plain.json"
    wf.write_text(json.dumps(graph))
    with FakeComfy() as server:
        base = ["bench", "--dataset", str(ds), "--out", str(tmp_path / "o"), "--comfy",
                server.url, "--workflow", str(wf), "--generate-only"]
        assert main(base) == 2
        err = capsys.readouterr().err
        assert "no node 'Bench prompt' (id or title) for the prompt" in err and "7 (KSampler)" in err
        assert main(base + ["--prompt-node", "4", "--seed-node", "7.sampler_name"]) == 2
        assert "has no input 'sampler_name' set to a value" in capsys.readouterr().err
        assert main(base + ["--prompt-node", "4", "--seed-node", "7", "--size-node", "1"]) == 2
        assert "no width and height" in capsys.readouterr().err
        assert main(base + ["--prompt-node", "4", "--seed-node", "7", "--steps", "8"]) == 2
        assert "--steps is the workflow's own" in capsys.readouterr().err
        assert server.received == []
        # named by id, without a size node: the workflow's own size is kept
        assert main(base + ["--prompt-node", "4.text", "--seed-node", "7"]) == 0
        assert len(server.received) == 6
        assert all(g["6"]["inputs"]["width"] == 512 for g in server.received)


def _workflows():
    from pathlib import Path
    return Path(__file__).resolve().parents[1] / "workflows" / "api"


# ----------------------------------------------------------------------------- FLUX options

def test_quantized_base_keeps_the_lora_and_stays_within_its_rounding(tmp_path):
    """--base int8 with --lora: the LoRA is fused into the full weights before they are
    quantized (its effect survives whole), and the output differs from the unquantized
    pipeline's only by the quantization's rounding."""
    import torch
    from science_t2i.nodes.lora.files import save_flux_lora
    from science_t2i.training.generate.flux_runs import load_flux_pipeline
    from tiny_lora import add_random_lora, forward
    pipe = build_tiny_flux_pipeline(tmp_path / "flux")
    lora = save_flux_lora(add_random_lora(pipe.transformer, rank=2, alpha=4.0),
                          tmp_path / "lora.safetensors", base_model=str(tmp_path / "flux"))
    cpu = torch.device("cpu")
    full = forward(load_flux_pipeline(str(tmp_path / "flux"), cpu, torch.float32, str(lora))
                   .transformer)
    q = load_flux_pipeline(str(tmp_path / "flux"), cpu, torch.float32, str(lora), base="int8")
    assert type(q.transformer.transformer_blocks[0].attn.to_q.weight).__name__ == "Int8Tensor"
    plain = forward(load_flux_pipeline(str(tmp_path / "flux"), cpu, torch.float32,
                                       base="int8").transformer)
    out = forward(q.transformer)
    rounding = (out - full).norm() / full.norm()
    assert 0 < rounding < 0.02
    assert (out - plain).norm() / full.norm() > 10 * rounding     # the LoRA is there


def test_bench_on_two_processes_draws_what_one_process_draws(tmp_path):
    """accelerate launch with two processes (gloo on the CPU): the processes share the run,
    and every image is byte for byte the one a single process draws."""
    import launch
    flux = tmp_path / "flux"
    build_tiny_flux_pipeline(flux)
    ds = _dataset(tmp_path / "ds")
    common = ["bench", "--dataset", str(ds), "--flux", str(flux), "--steps", "2",
              "--resolution", "32", "--generate-only", "--device", "cpu"]
    out = launch.run(2, common + ["--out", str(tmp_path / "two")], timeout=300)
    assert "drawn here" in out.stderr or "drawn here" in out.stdout
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    one = sorted((tmp_path / "one" / "images").rglob("*.png"))
    assert len(one) == 6
    for path in one:
        twin = tmp_path / "two" / "images" / path.relative_to(tmp_path / "one" / "images")
        assert twin.read_bytes() == path.read_bytes(), path.name
