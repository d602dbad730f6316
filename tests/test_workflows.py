"""The shipped workflows validate, and the validator catches what breaks a graph.

The UI/API conversion expectations below are written out by hand from how ComfyUI's frontend
saves workflows (widget values in input order, a "control after generate" value after each
seed, linked widgets keep their last value) and how /prompt takes them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from science_t2i.nodes import NODE_CLASS_MAPPINGS
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.cli import main
from science_t2i.training.comfy import node_defs as nd
from science_t2i.training.comfy import workflow_check as wc

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))
EXPECTED = {"score_and_rank", "implicit_vs_explicit", "subject_mask", "science_lora",
            "science_judge", "flux_vs_imgcoder"}


@pytest.fixture(scope="module")
def defs():
    return wc.load_node_defs()


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def node_by_type(ui: dict, type_name: str) -> dict:
    return next(n for n in ui["nodes"] if n["type"] == type_name)


def api_id(api: dict, type_name: str) -> str:
    return next(k for k, v in api.items() if v["class_type"] == type_name)


# ----------------------------------------------------------------------------- shipped files

def test_every_workflow_of_the_issue_is_shipped_in_both_formats_with_a_thumbnail():
    names = {p.stem for p in UI_FILES}
    assert EXPECTED <= names
    for name in names:
        assert (WORKFLOWS / "api" / f"{name}.json").is_file(), name
        # ComfyUI's template browser shows <name>.jpg next to <name>.json for custom nodes.
        thumb = WORKFLOWS / f"{name}.jpg"
        assert thumb.is_file(), name
        assert thumb.read_bytes()[:3] == b"\xff\xd8\xff"      # a JPEG
    assert (WORKFLOWS / "api" / "rollout.json").is_file()


def test_ui_files_are_ui_format_and_api_files_are_api_format():
    assert UI_FILES and API_FILES
    for path in UI_FILES:
        assert wc.workflow_format(load(path)) == "ui", path
    for path in API_FILES:
        assert wc.workflow_format(load(path)) == "api", path


@pytest.mark.parametrize("path", UI_FILES + API_FILES, ids=lambda p: p.relative_to(WORKFLOWS).as_posix())
def test_shipped_workflow_validates(path, defs):
    assert wc.check_workflow(path, defs) == []


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_and_its_api_twin_describe_the_same_graph(path, defs):
    ui, api = load(path), load(WORKFLOWS / "api" / path.name)
    assert wc.check_twins(ui, api, defs) == []
    assert set(wc.ui_to_api(ui, defs)) == set(api)


def test_every_pack_node_appears_in_a_workflow():
    used: set[str] = set()
    for path in UI_FILES + API_FILES:
        used |= wc.workflow_node_types(load(path))
    assert NODE_CLASS_MAPPINGS, "the pack registers no nodes"
    missing = sorted(set(NODE_CLASS_MAPPINGS) - used)
    assert missing == [], f"pack nodes in no workflow: {missing}"


def test_the_core_record_holds_exactly_the_core_nodes_the_workflows_use():
    used: set[str] = set()
    for path in UI_FILES + API_FILES:
        used |= wc.workflow_node_types(load(path))
    core = set(nd.core_node_defs())
    assert core == used - set(NODE_CLASS_MAPPINGS)


def test_ui_workflows_name_the_model_files_users_have():
    text = "".join(p.read_text() for p in UI_FILES)
    for name in ("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors",
                 "ae.safetensors"):
        assert name in text


def test_cli_validates_the_shipped_workflows(capsys):
    files = [str(p) for p in UI_FILES + API_FILES]
    assert main(["validate-workflow", *files]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == len(files)


# ----------------------------------------------------------------------------- seeded breakages

@pytest.fixture
def pair():
    """score_and_rank in both formats (copies, free to break)."""
    return load(WORKFLOWS / "score_and_rank.json"), load(WORKFLOWS / "api" / "score_and_rank.json")


def test_unknown_node_is_named_with_a_suggestion(pair, defs):
    ui, api = pair
    node_by_type(ui, "ScienceT2I_ScoreOverlay")["type"] = "ScienceT2I_ScoreOverlai"
    nid = api_id(api, "ScienceT2I_ScoreOverlay")
    api[nid]["class_type"] = "ScienceT2I_ScoreOverlai"
    for problems in (wc.check_workflow(ui, defs), wc.check_workflow(api, defs)):
        assert len(problems) == 1
        assert "unknown node type 'ScienceT2I_ScoreOverlai'" in problems[0]
        assert "did you mean ScienceT2I_ScoreOverlay" in problems[0]


def test_renamed_input_in_api_format(pair, defs):
    _, api = pair
    nid = api_id(api, "ScienceT2I_SaveScoredImages")
    api[nid]["inputs"]["image"] = api[nid]["inputs"].pop("images")
    problems = wc.check_workflow(api, defs)
    assert f"node {nid} (ScienceT2I_SaveScoredImages): 'image' is not an input of " \
           "ScienceT2I_SaveScoredImages (its inputs: images, scores, prompt, filename_prefix, " \
           "sciscore_model); did you mean 'images'?" in problems
    assert f"node {nid} (ScienceT2I_SaveScoredImages): required input 'images' is missing " \
           "(needs a link from a IMAGE output)" in problems
    assert len(problems) == 2


def test_renamed_input_in_ui_format(pair, defs):
    ui, _ = pair
    node = node_by_type(ui, "VAEDecode")
    node["inputs"][1]["name"] = "vea"
    problems = wc.check_workflow(ui, defs)
    nid = node["id"]
    assert any(p.startswith(f"node {nid} (VAEDecode) input slot 1: 'vea' is not an input of "
                            "VAEDecode") and "did you mean 'vae'?" in p for p in problems)
    assert f"node {nid} (VAEDecode): required input 'vae' has no link from a VAE output" in problems


def test_dangling_links(pair, defs):
    ui, api = pair
    nid = api_id(api, "VAEDecode")
    api[nid]["inputs"]["vae"] = ["99", 0]
    assert wc.check_workflow(api, defs) == [
        f"node {nid} (VAEDecode): input 'vae' links to node 99, which does not exist "
        "(dangling link)"]
    # UI: the link list loses the link an input still refers to
    node = node_by_type(ui, "VAEDecode")
    link_id = node["inputs"][1]["link"]
    ui["links"] = [l for l in ui["links"] if l[0] != link_id]
    problems = wc.check_workflow(ui, defs)
    assert f"node {node['id']} (VAEDecode): input 'vae' refers to link {link_id}, which is not " \
           "in the links list (dangling link)" in problems
    # UI: a link whose source node was deleted
    ui2, _ = load(WORKFLOWS / "score_and_rank.json"), None
    loader = node_by_type(ui2, "VAELoader")
    ui2["nodes"] = [n for n in ui2["nodes"] if n is not loader]
    problems = wc.check_workflow(ui2, defs)
    assert any(f"source node {loader['id']} does not exist (dangling link)" in p for p in problems)


def test_out_of_range_output_slot(pair, defs):
    ui, api = pair
    nid = api_id(api, "VAEDecode")
    src = api[nid]["inputs"]["vae"][0]
    api[nid]["inputs"]["vae"] = [src, 3]
    assert wc.check_workflow(api, defs) == [
        f"node {nid} (VAEDecode): input 'vae' links to output 3 of node {src} (VAELoader), "
        "which has 1 outputs"]
    node = node_by_type(ui, "VAEDecode")
    link = next(l for l in ui["links"] if l[0] == node["inputs"][1]["link"])
    link[2] = 3
    assert f"link {link[0]}: node {link[1]} (VAELoader) has no output slot 3 (it has 1)" in \
        wc.check_workflow(ui, defs)


def test_wrong_type(pair, defs):
    ui, api = pair
    ks = api_id(api, "KSampler")
    vae = api_id(api, "VAELoader")
    api[ks]["inputs"]["model"] = [vae, 0]
    assert wc.check_workflow(api, defs) == [
        f"node {ks} (KSampler): type mismatch: input 'model' takes MODEL but node {vae} "
        "(VAELoader) output 'VAE' is VAE"]
    # UI: rewire the sampler's model link to come from the VAE loader
    sampler = node_by_type(ui, "KSampler")
    loader = node_by_type(ui, "VAELoader")
    link = next(l for l in ui["links"] if l[0] == sampler["inputs"][0]["link"])
    link[1], link[2] = loader["id"], 0
    problems = wc.check_workflow(ui, defs)
    assert f"link {link[0]}: type mismatch: VAELoader (node {loader['id']}) output 'VAE' is VAE, " \
           f"but KSampler (node {sampler['id']}) input 'model' takes MODEL" in problems


def test_literal_where_a_link_is_needed_and_bad_widget_values(pair, defs):
    _, api = pair
    ks = api_id(api, "KSampler")
    api[ks]["inputs"]["latent_image"] = 5
    api[ks]["inputs"]["sampler_name"] = "eulr"
    api[ks]["inputs"]["steps"] = 2.5
    api[ks]["inputs"]["cfg"] = 1000.0
    problems = wc.check_workflow(api, defs)
    assert f"node {ks} (KSampler): input 'latent_image' takes a link from a LATENT output, not " \
           "the value 5" in problems
    assert any(p.startswith(f"node {ks} (KSampler): input 'sampler_name' is 'eulr', not one of [")
               for p in problems)
    assert f"node {ks} (KSampler): input 'steps' expects an integer, got 2.5" in problems
    assert f"node {ks} (KSampler): input 'cfg' is 1000.0, above its maximum 100.0" in problems
    assert len(problems) == 4


def test_widget_count(pair, defs):
    ui, _ = pair
    sampler = node_by_type(ui, "KSampler")
    sampler["widgets_values"] = sampler["widgets_values"][:-1]          # denoise lost
    problems = wc.check_workflow(ui, defs)
    assert problems == [
        f"node {sampler['id']} (KSampler): widgets_values has 6 values but KSampler expects 7 "
        "(seed + control_after_generate, steps, cfg, sampler_name, scheduler, denoise); re-save "
        "the workflow from ComfyUI or fix the list"]
    sampler["widgets_values"] = [42, 20, 1.0, "euler", "simple", 1.0, 1.0]  # no control value
    assert "must be followed by its control after generate value" in \
        wc.check_workflow(ui, defs)[0]


def test_twins_that_differ(pair, defs):
    ui, api = pair
    ks = api_id(api, "KSampler")
    api[ks]["inputs"]["steps"] = 28
    rank = api_id(api, "ScienceT2I_SciScoreRank")
    api[rank]["inputs"]["images"] = [api_id(api, "ScienceT2I_ScoreOverlay"), 0]
    preview = api_id(api, "PreviewImage")
    del api[preview]
    problems = wc.check_twins(ui, api, defs)
    assert f"node {ks} (KSampler): input 'steps' is 20 in the UI workflow but 28 in the API " \
           "workflow" in problems
    assert any(p.startswith(f"node {rank} (ScienceT2I_SciScoreRank): input 'images' is a link "
                            "from node ") for p in problems)
    assert f"node {preview} (PreviewImage) is in the UI workflow but not in the API workflow" \
        in problems
    assert len(problems) == 3


def test_twin_check_through_the_cli(tmp_path, capsys):
    (tmp_path / "api").mkdir()
    ui = load(WORKFLOWS / "score_and_rank.json")
    api = load(WORKFLOWS / "api" / "score_and_rank.json")
    api[api_id(api, "EmptySD3LatentImage")]["inputs"]["batch_size"] = 8
    (tmp_path / "g.json").write_text(json.dumps(ui))
    (tmp_path / "api" / "g.json").write_text(json.dumps(api))
    assert main(["validate-workflow", str(tmp_path / "g.json")]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {tmp_path / 'g.json'}" in out
    assert "input 'batch_size' is 4 in the UI workflow but 8 in the API workflow" in out
    assert main(["validate-workflow", "--no-twins", str(tmp_path / "g.json")]) == 0


def test_unreadable_files_get_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScienceT2IError, match="not valid JSON"):
        wc.load_workflow(bad)
    with pytest.raises(ScienceT2IError, match="does not exist"):
        wc.load_workflow(tmp_path / "missing.json")
    with pytest.raises(ScienceT2IError, match="not a ComfyUI workflow"):
        wc.workflow_format({"nodes": 3})
    assert main(["validate-workflow", str(bad)]) == 1
    assert "not valid JSON" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the UI format

def _core_ui_graph() -> dict:
    """A UI graph as the ComfyUI frontend saves it: KSampler with its control value, a
    CLIPTextEncode whose text widget is linked (it keeps its stale value), a note."""
    def node(nid, type_, inputs, outputs, values):
        return {"id": nid, "type": type_, "pos": [0, 0], "size": [300, 100], "flags": {},
                "order": nid, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {}, "widgets_values": values}
    return {
        "nodes": [
            node(1, "UNETLoader", [], [{"name": "MODEL", "type": "MODEL", "links": [1]}],
                 ["flux1-dev.safetensors", "default"]),
            node(2, "DualCLIPLoader", [], [{"name": "CLIP", "type": "CLIP", "links": [2]}],
                 ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"]),
            node(3, "PrimitiveStringMultiline", [],
                 [{"name": "STRING", "type": "STRING", "links": [3]}], ["a green apple"]),
            node(4, "CLIPTextEncode",
                 [{"name": "clip", "type": "CLIP", "link": 2},
                  {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 3}],
                 [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4, 5]}], ["stale"]),
            node(5, "EmptySD3LatentImage", [], [{"name": "LATENT", "type": "LATENT",
                                                 "links": [6]}], [512, 512, 2]),
            node(6, "KSampler",
                 [{"name": "model", "type": "MODEL", "link": 1},
                  {"name": "positive", "type": "CONDITIONING", "link": 4},
                  {"name": "negative", "type": "CONDITIONING", "link": 5},
                  {"name": "latent_image", "type": "LATENT", "link": 6}],
                 [{"name": "LATENT", "type": "LATENT", "links": []}],
                 [1234, "randomize", 20, 1.0, "euler", "simple", 1.0]),
            {"id": 7, "type": "MarkdownNote", "pos": [0, 0], "size": [200, 60], "flags": {},
             "order": 7, "mode": 0, "inputs": [], "outputs": [], "properties": {},
             "widgets_values": ["notes are not sent to the server"]},
        ],
        "links": [[1, 1, 0, 6, 0, "MODEL"], [2, 2, 0, 4, 0, "CLIP"], [3, 3, 0, 4, 1, "STRING"],
                  [4, 4, 0, 6, 1, "CONDITIONING"], [5, 4, 0, 6, 2, "CONDITIONING"],
                  [6, 5, 0, 6, 3, "LATENT"]],
        "version": 0.4,
    }


def test_ui_to_api_follows_the_frontend(defs):
    ui = _core_ui_graph()
    assert wc.check_workflow(ui, defs) == []
    assert wc.ui_to_api(ui, defs) == {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                     "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {
            "clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors",
            "type": "flux", "device": "default"}},
        "3": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a green apple"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": ["3", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 512, "height": 512,
                                                              "batch_size": 2}},
        "6": {"class_type": "KSampler", "inputs": {
            "seed": 1234, "steps": 20, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0, "model": ["1", 0], "positive": ["4", 0],
            "negative": ["4", 0], "latent_image": ["5", 0]}},
    }


def test_links_saved_as_objects_read_the_same(defs):
    ui = _core_ui_graph()
    expected = wc.ui_to_api(ui, defs)
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    ui["links"] = [dict(zip(keys, link)) for link in ui["links"]]
    assert wc.check_workflow(ui, defs) == []
    assert wc.ui_to_api(ui, defs) == expected
    ui["links"][0]["origin_id"] = 42
    assert "link 1: source node 42 does not exist (dangling link)" in wc.check_workflow(ui, defs)


def test_muted_nodes_are_not_queued_and_types_follow_comfyui_rules(defs):
    ui = _core_ui_graph()
    ui["nodes"][4]["mode"] = 2            # muted latent: not part of the queued graph
    assert "5" not in wc.ui_to_api(ui, defs)
    assert wc.types_compatible("IMAGE", "*") and wc.types_compatible("*", "MASK")
    assert wc.types_compatible("IMAGE", "IMAGE,MASK")
    assert not wc.types_compatible("LATENT", "IMAGE,MASK")


def test_pack_definitions_are_read_from_the_classes():
    defs = nd.pack_node_defs()
    assert set(defs) == set(NODE_CLASS_MAPPINGS)
    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        declared = list(spec.get("required", {})) + list(spec.get("optional", {}))
        assert list(defs[name].inputs) == declared
        assert defs[name].outputs == tuple(cls.RETURN_TYPES)
