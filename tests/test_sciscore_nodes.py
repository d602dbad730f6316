"""The SciScore nodes through their real classes (stub ComfyUI bridge), and the CLI."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image
from science_t2i.nodes.core.images import from_pil, to_pil
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.sciscore import DEFAULT_SCISCORE, SciScoreModel
from science_t2i.nodes.sciscore.node_classes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from tiny_clip import (build_tiny_clip, build_tiny_open_clip, random_uint8_images,
                       reference_sciscore)

PROMPT = "an unripe apple on the table"
N = NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("nodes") / "tiny", image_size=32, seed=3)


@pytest.fixture
def loaded(comfy, clip_dir):
    """A SCISCORE_MODEL from the Loader node, inside (stub) ComfyUI."""
    shutil.copytree(clip_dir, comfy.models_dir / "sciscore" / "SciScoreTiny")
    (model,) = N["ScienceT2I_SciScoreLoader"]().load("SciScoreTiny", "auto", 4)
    return model


def ref_scores(clip_dir, images, prompts):
    return reference_sciscore(clip_dir, [to_pil(im) for im in images], prompts)


def test_every_node_is_a_v1_node_in_the_category():
    assert set(N) == set(NODE_DISPLAY_NAME_MAPPINGS)
    assert len(N) == 7  # six SciScore nodes and the paper's ND
    for cls in N.values():
        spec = cls.INPUT_TYPES()
        assert "required" in spec and hasattr(cls, cls.FUNCTION)
        assert cls.CATEGORY == "Science-T2I/SciScore"
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)


def test_loader_lists_folders_files_and_hub_id(comfy, clip_dir, tmp_path):
    root = comfy.models_dir / "sciscore"
    shutil.copytree(clip_dir, root / "SciScoreTiny")
    build_tiny_open_clip(root / "oc", name="vith.safetensors")
    choices = N["ScienceT2I_SciScoreLoader"].INPUT_TYPES()["required"]["model"][0]
    assert choices[0] == DEFAULT_SCISCORE
    assert "SciScoreTiny" in choices and "oc/vith.safetensors" in choices
    assert "SciScoreTiny/model.safetensors" not in choices  # weights inside a folder are not models


def test_loader_gives_a_model_patcher_model(loaded, comfy):
    from comfy.model_patcher import ModelPatcher
    assert isinstance(loaded, SciScoreModel) and isinstance(loaded.patcher, ModelPatcher)
    assert loaded.batch_size == 4 and loaded.dtype == torch.float32  # fp32 on CPU


def test_sciscore_node_scores_and_shows_a_summary(loaded, clip_dir):
    images = random_uint8_images(3, 32, 32, seed=1)
    out = N["ScienceT2I_SciScore"]().score(loaded, images, PROMPT)
    scores, summary = out["result"]
    assert out["ui"]["text"] == [summary]
    ref = ref_scores(clip_dir, images, [PROMPT] * 3)
    assert isinstance(scores, list) and len(scores) == 3
    assert max(abs(a - b) for a, b in zip(scores, ref.tolist())) < 1e-4
    best = max(range(3), key=lambda i: ref[i])
    assert summary.splitlines()[0].startswith(f"#1 image {best}: ")
    assert N["ScienceT2I_SciScore"].OUTPUT_IS_LIST == (True, False)


def test_sciscore_node_one_prompt_per_line(loaded, clip_dir):
    images = random_uint8_images(2, 32, 32, seed=2)
    prompts = ["a glass of frozen water", "red apple"]
    scores, _ = N["ScienceT2I_SciScore"]().score(loaded, images, "\n".join(prompts) + "\n")["result"]
    ref = ref_scores(clip_dir, images, prompts)
    assert max(abs(a - b) for a, b in zip(scores, ref.tolist())) < 1e-4
    with pytest.raises(ScienceT2IError, match="got 2 prompts for 3 images"):
        N["ScienceT2I_SciScore"]().score(loaded, random_uint8_images(3, 32, 32), "a\nb")
    with pytest.raises(ScienceT2IError, match="prompt is empty"):
        N["ScienceT2I_SciScore"]().score(loaded, images, " \n ")


def test_rank_node_sorts_best_first_and_keeps_top_k(loaded, clip_dir):
    images = random_uint8_images(5, 32, 32, seed=3)
    ref = ref_scores(clip_dir, images, [PROMPT] * 5).tolist()
    expected = sorted(range(5), key=lambda i: -ref[i])
    out = N["ScienceT2I_SciScoreRank"]().rank(loaded, images, PROMPT, 2)
    ranked, scores, indices, summary = out["result"]
    assert indices == expected[:2]
    assert torch.equal(ranked, images[expected[:2]])
    assert scores == pytest.approx([ref[i] for i in expected[:2]], abs=1e-4)
    assert len(summary.splitlines()) == 2
    all_images, _, all_idx, _ = N["ScienceT2I_SciScoreRank"]().rank(loaded, images, PROMPT, 0)["result"]
    assert all_idx == expected and all_images.shape == images.shape


def test_pairwise_node_probability_of_the_first(loaded, clip_dir):
    a = random_uint8_images(2, 32, 32, seed=4)
    b = random_uint8_images(2, 48, 40, seed=5)  # sizes may differ between A and B
    out = N["ScienceT2I_SciScorePairwise"]().compare(loaded, a, b, PROMPT)
    prob, sa, sb, summary = out["result"]
    ra = ref_scores(clip_dir, a, [PROMPT] * 2)
    assert sa == pytest.approx(ra.tolist(), abs=1e-4)
    for i in range(2):  # softmax over the pair, written out
        assert prob[i] == pytest.approx(math.exp(sa[i]) / (math.exp(sa[i]) + math.exp(sb[i])),
                                        abs=1e-6)
    assert "P(A)" in summary and out["ui"]["text"] == [summary]
    for i in range(2):
        better = "A" if sa[i] > sb[i] else "B"
        assert summary.splitlines()[i].endswith(f"({better} more plausible)")
    with pytest.raises(ScienceT2IError, match="same batch size"):
        N["ScienceT2I_SciScorePairwise"]().compare(loaded, a, b[:1], PROMPT)


def test_pairwise_node_calls_identical_images_a_tie(loaded):
    a = random_uint8_images(1, 32, 32, seed=7)
    prob, sa, sb, summary = N["ScienceT2I_SciScorePairwise"]().compare(loaded, a, a.clone(),
                                                                       PROMPT)["result"]
    assert sa == sb and prob == [0.5]
    assert "tie" in summary and "more plausible" not in summary


def test_overlay_draws_the_score_and_leaves_other_pixels(loaded):
    images = random_uint8_images(2, 96, 128, seed=6)
    (out,) = N["ScienceT2I_ScoreOverlay"]().overlay([images], [12.5, -3.25], ["top-left"], [0],
                                                    ["SciScore"])
    assert len(out) == 1 and out[0].shape == images.shape
    changed = (out[0] - images).abs().amax(-1) > 1e-6  # [B,H,W]
    assert changed[:, :20, :40].any()  # the label's corner
    assert not changed[:, 60:, :].any() and not changed[:, :, 100:].any()  # the rest untouched
    (br,) = N["ScienceT2I_ScoreOverlay"]().overlay([images], [1.0, 2.0], ["bottom-right"], [0],
                                                   ["SciScore"])
    changed = (br[0] - images).abs().amax(-1) > 1e-6
    assert changed[:, -20:, -40:].any() and not changed[:, :40, :].any()
    with pytest.raises(ScienceT2IError, match="2 images but 1 scores"):
        N["ScienceT2I_ScoreOverlay"]().overlay([images], [1.0], ["top-left"], [0], [""])


def test_save_node_writes_pngs_with_prompt_and_scores(comfy):
    images = random_uint8_images(3, 40, 30, seed=7)
    out_dir = comfy.models_dir.parent / "output"
    node = N["ScienceT2I_SaveScoredImages"]()
    res = node.save([images], [1.5, 3.0, -2.0], [PROMPT], ["sci/test"],
                    graph=[{"1": {"class_type": "X"}}], extra_pnginfo=[{"workflow": {"n": 1}}])
    files = sorted((out_dir / "sci").glob("*"))
    assert [f.name for f in files] == ["test_00001.png", "test_00002.png", "test_00003.png"]
    assert [d["filename"] for d in res["ui"]["images"]] == [f.name for f in files]
    assert all(d["subfolder"] == "sci" and d["type"] == "output" for d in res["ui"]["images"])
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in files)  # readable like any output
    with Image.open(files[1]) as img:
        meta = img.text
        pixels = from_pil(img)[0]
    assert meta["sciscore_prompt"] == PROMPT
    assert json.loads(meta["sciscore"])["score"] == 3.0 and json.loads(meta["sciscore"])["rank"] == 1
    assert json.loads(meta["workflow"]) == {"n": 1} and "class_type" in meta["prompt"]
    assert torch.allclose(pixels, images[1], atol=1e-6)  # lossless: values on the 1/255 grid
    node.save([images[:1]], [0.5], ["x"], ["sci/test"])
    assert (out_dir / "sci" / "test_00004.png").is_file()  # numbering continues
    with pytest.raises(ScienceT2IError, match="outside the output folder"):
        node.save([images[:1]], [0.5], ["x"], ["../escape"])
    with pytest.raises(ScienceT2IError, match="3 images but"):
        node.save([images], [0.5], ["x"], ["sci/test"])


def test_save_node_ranks_images_of_different_sizes_together(comfy):
    batches = [random_uint8_images(1, 40, 30, seed=1), random_uint8_images(2, 24, 32, seed=2)]
    scores = [0.5, 2.0, -1.0]
    N["ScienceT2I_SaveScoredImages"]().save(batches, scores, [PROMPT], ["mixed/s"])
    files = sorted((comfy.models_dir.parent / "output" / "mixed").glob("*.png"))
    metas = []
    for f in files:
        with Image.open(f) as img:
            metas.append((img.size, json.loads(img.text["sciscore"])))
    assert [m["score"] for _, m in metas] == scores
    order = sorted(range(3), key=lambda i: -scores[i])        # best first, over all three
    assert [m["rank"] for _, m in metas] == [order.index(i) + 1 for i in range(3)]
    assert all(m["of"] == 3 for _, m in metas)
    assert [size for size, _ in metas] == [(30, 40), (32, 24), (32, 24)]


def test_save_node_names_the_scoring_model(comfy, loaded):
    images = random_uint8_images(2, 16, 16, seed=3)
    out_dir = comfy.models_dir.parent / "output"
    node = N["ScienceT2I_SaveScoredImages"]()

    def model_of(path):
        with Image.open(path) as img:
            return json.loads(img.text["sciscore"]).get("model")
    node.save([images], [1.0, 2.0], ["p"], ["named/a"], sciscore_model=[loaded])
    assert model_of(out_dir / "named" / "a_00001.png") == loaded.name != ""
    # not connected: the graph's only SciScore Loader names it
    graph = {"3": {"class_type": "ScienceT2I_SciScoreLoader",
                   "inputs": {"model": "SciScore", "dtype": "auto"}}}
    node.save([images], [1.0, 2.0], ["p"], ["named/b"], graph=[graph])
    assert model_of(out_dir / "named" / "b_00001.png") == "SciScore"
    # unknown: left out, never written empty
    node.save([images], [1.0, 2.0], ["p"], ["named/c"])
    assert model_of(out_dir / "named" / "c_00001.png") is None


def test_save_node_standalone_uses_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCIENCE_T2I_OUTPUT", raising=False)
    N["ScienceT2I_SaveScoredImages"]().save([random_uint8_images(1, 8, 8)], [1.0], ["p"], ["s"])
    assert (tmp_path / "output" / "s_00001.png").is_file()


# ----------------------------------------------------------------------------- CLI

def _write_images(folder, images):
    folder.mkdir()
    paths = []
    for i, im in enumerate(images):
        p = folder / f"img{i}.png"
        to_pil(im).save(p)
        paths.append(p)
    return paths


def test_cli_json_ranks_like_the_reference(tmp_path, clip_dir, capsys, models_dir):
    from science_t2i.training.cli import main
    images = random_uint8_images(3, 32, 32, seed=8)
    paths = _write_images(tmp_path / "imgs", images)
    rc = main(["score", *map(str, paths), "--prompt", PROMPT, "--model", str(clip_dir), "--json",
               "--device", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    ref = ref_scores(clip_dir, images, [PROMPT] * 3).tolist()
    expected = sorted(range(3), key=lambda i: -ref[i])
    assert [r["image"] for r in out["results"]] == [str(paths[i]) for i in expected]
    assert [r["score"] for r in out["results"]] == pytest.approx([ref[i] for i in expected], abs=1e-4)
    assert sum(r["probability"] for r in out["results"]) == pytest.approx(1.0, abs=1e-5)


def test_cli_table_and_folder_expansion(tmp_path, clip_dir, capsys, models_dir):
    from science_t2i.training.cli import main
    _write_images(tmp_path / "imgs", random_uint8_images(2, 30, 45, seed=9))
    shutil.copytree(clip_dir, models_dir / "sciscore" / "tiny")
    assert main(["score", str(tmp_path / "imgs"), "--prompt", PROMPT, "--model", "tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "prob", "image"]
    assert lines[1].split()[0] == "1" and lines[2].split()[0] == "2"
    assert lines[-1] == f"prompt: {PROMPT}"


def test_cli_errors_are_clear(tmp_path, capsys, models_dir, monkeypatch):
    import huggingface_hub.constants
    from science_t2i.training.cli import main
    assert main(["score", str(tmp_path / "missing.png"), "--prompt", "x"]) == 2
    assert "image not found" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["score", str(bad), "--prompt", "x"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    good = _write_images(tmp_path / "g", random_uint8_images(1, 8, 8))[0]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["--models-dir", str(models_dir), "score", str(good), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "hf download Jialuo21/SciScore --local-dir" in err
    assert str(models_dir / "sciscore" / "SciScore") in err
