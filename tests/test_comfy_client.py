"""The ComfyUI rollout source against fake ComfyUI servers on 127.0.0.1."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from fake_comfy import FakeComfy
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.stage2.comfy_rollouts import (ComfyRolloutClient, ComfyServer,
                                                        RolloutRequest, fill_workflow,
                                                        load_workflow)

ROLLOUT = Path(__file__).resolve().parents[1] / "workflows" / "api" / "rollout.json"


def requests(n: int, k: int = 2) -> list[RolloutRequest]:
    return [RolloutRequest(i, f"prompt {i}", f"subject {i}", seed=100 + 10 * i, num_images=k)
            for i in range(n)]


def client(servers, tmp_path, **kw):
    return ComfyRolloutClient([ComfyServer(s.url, tmp_path / "loras") for s in servers], ROLLOUT,
                              poll_interval=0.01, request_timeout=5.0, **kw)


def test_fill_workflow_sets_the_request_into_the_shipped_graph():
    graph = load_workflow(ROLLOUT)
    g = fill_workflow(graph, RolloutRequest(0, "a rusty hammer", "hammer", 42, 3),
                      "science_t2i_rollout_000007.safetensors", size=(256, 256))
    by_title = {n["_meta"]["title"]: n["inputs"] for n in g.values()}
    assert by_title["Rollout prompt"]["text"] == "a rusty hammer"
    assert by_title["Rollout sampler"]["seed"] == 42
    assert by_title["Rollout latent"]["batch_size"] == 3
    assert (by_title["Rollout latent"]["width"], by_title["Rollout latent"]["height"]) == (256, 256)
    assert by_title["Rollout LoRA"]["lora_name"] == "science_t2i_rollout_000007.safetensors"
    assert by_title["Rollout SciScore"]["prompt"] == "a rusty hammer"
    assert by_title["Rollout images"]["prompt"] == "a rusty hammer"
    assert graph != g  # the template is left untouched


def test_switching_the_lora_off_sets_the_loaders_own_strength_input():
    graph = load_workflow(ROLLOUT)
    g = fill_workflow(graph, RolloutRequest(0, "a rusty hammer", "hammer", 42, 3), None)
    lora = next(n for n in g.values() if n["_meta"]["title"] == "Rollout LoRA")
    assert lora["class_type"] == "ScienceT2I_LoraLoader"
    assert lora["inputs"]["strength"] == 0.0 and "strength_model" not in lora["inputs"]
    # ComfyUI's own LoRA loader names it strength_model
    core = copy.deepcopy(graph)
    node = next(n for n in core.values() if n["_meta"]["title"] == "Rollout LoRA")
    node["class_type"] = "LoraLoaderModelOnly"
    node["inputs"]["strength_model"] = node["inputs"].pop("strength")
    g = fill_workflow(core, RolloutRequest(0, "x", "x", 1, 1), None)
    node = next(n for n in g.values() if n["_meta"]["title"] == "Rollout LoRA")
    assert node["inputs"]["strength_model"] == 0.0 and "strength" not in node["inputs"]
    del node["inputs"]["strength_model"]
    with pytest.raises(ScienceT2IError, match="no strength input"):
        fill_workflow(g, RolloutRequest(0, "x", "x", 1, 1), None)


def test_a_graph_accepted_only_in_part_counts_as_rejected(tmp_path):
    # ComfyUI answers 200 with a prompt id when some outputs are valid, listing the invalid
    # nodes in node_errors, and runs the rest: that server's answer is a rejection
    with FakeComfy(mode="partial") as partial, FakeComfy() as good:
        results = client([partial, good], tmp_path).run_round(requests(3))
        assert all(r.server == good.url for r in results) and len(results) == 3
        assert partial.deleted and not partial.jobs     # its queued part was taken back
    with FakeComfy(mode="partial") as partial:
        with pytest.raises(ScienceT2IError) as err:
            client([partial], tmp_path).run_round(requests(1))
    msg = str(err.value)
    assert "only in part" in msg and "(SaveImage): Required input is missing image" in msg


def test_round_runs_on_two_servers_in_parallel(tmp_path):
    with FakeComfy() as a, FakeComfy() as b:
        results = client([a, b], tmp_path).run_round(requests(6), "lora.safetensors")
    assert [r.index for r in results] == list(range(6))
    for i, r in enumerate(results):
        assert r.images.shape == (2, 16, 16, 3)
        # the fake paints each image with (seed + j) % 10 / 10: the right images came back
        expected = torch.tensor([((100 + 10 * i + j) % 10) / 10 for j in range(2)])
        assert torch.allclose(r.images.mean(dim=(1, 2, 3)), expected, atol=1 / 255)
    assert len(a.received) + len(b.received) == 6 and a.received and b.received
    sent = [n for g in a.received + b.received for n in g.values()
            if n["_meta"]["title"] == "Rollout LoRA"]
    assert {n["inputs"]["lora_name"] for n in sent} == {"lora.safetensors"}


def test_a_server_that_disappears_mid_round_is_skipped_and_its_prompt_requeued(tmp_path):
    with FakeComfy() as good:
        bad = FakeComfy(mode="vanish", polls_before_done=3).__enter__()
        results = client([bad, good], tmp_path).run_round(requests(4))
    assert bad.received, "the vanishing server should have taken a prompt before it went away"
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert all(r.server == good.url for r in results)
    assert len(good.received) == 4


@pytest.mark.parametrize("mode", ["reject", "exec_error"])
def test_a_failing_server_is_skipped(tmp_path, mode):
    with FakeComfy() as good, FakeComfy(mode=mode) as bad:
        results = client([bad, good], tmp_path).run_round(requests(3))
    assert all(r.server == good.url for r in results) and len(results) == 3


def test_error_responses_are_reported_when_no_server_is_left(tmp_path):
    with FakeComfy(mode="reject") as a, FakeComfy(mode="exec_error") as b:
        with pytest.raises(ScienceT2IError) as err:
            client([a, b], tmp_path).run_round(requests(2))
    msg = str(err.value)
    assert "lora_name: 'missing.safetensors' not in []" in msg  # the node_errors detail
    assert "CUDA out of memory" in msg                         # the execution_error message
    assert "0 of 2 prompts" in msg


def test_masks_and_scores_from_the_graph_outputs(tmp_path):
    with FakeComfy() as a:
        c = ComfyRolloutClient([a.url], ROLLOUT, poll_interval=0.01)
        (r,) = c.run_round(requests(1, k=3))
    assert r.masks.shape == (3, 16, 16)
    assert torch.all(r.masks[:, :, :8] == 1) and torch.all(r.masks[:, :, 8:] == 0)
    assert torch.allclose(r.scores, torch.tensor([0.0, 0.1, 0.2]))
    sent = {n["_meta"]["title"]: n["inputs"] for n in a.received[0].values()}
    assert sent["Rollout SciScore"]["prompt"] == "prompt 0"
    assert sent["Rollout subject mask"]["subject"] == "subject 0"


def test_publish_lora_writes_a_new_name_each_round_and_removes_old_ones(tmp_path):
    lora = tmp_path / "current.safetensors"
    lora.write_bytes(b"round one")
    shared = tmp_path / "shared_loras"
    c = ComfyRolloutClient([ComfyServer("http://127.0.0.1:1", shared),
                            ComfyServer("http://127.0.0.1:2", shared)], ROLLOUT)
    n1 = c.publish_lora(lora, 1)
    assert (shared / n1).read_bytes() == b"round one"
    lora.write_bytes(b"round two")
    n2 = c.publish_lora(lora, 2)
    assert n2 != n1 and (shared / n2).read_bytes() == b"round two"
    assert sorted(p.name for p in shared.iterdir()) == [n2]  # no temp files, old round gone


def test_bad_configuration_is_explained(tmp_path):
    with pytest.raises(ScienceT2IError, match="not a server URL"):
        ComfyServer.parse("localhost:8188")
    s = ComfyServer.parse("http://127.0.0.1:8188/=" + str(tmp_path))
    assert s.url == "http://127.0.0.1:8188" and s.lora_dir == tmp_path
    c = ComfyRolloutClient(["http://127.0.0.1:8188"], ROLLOUT)
    with pytest.raises(ScienceT2IError, match="no LoRA folder"):
        c.publish_lora(tmp_path / "x.safetensors", 0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(ScienceT2IError, match="API-format"):
        load_workflow(bad)
    graph = load_workflow(ROLLOUT)
    graph = {k: v for k, v in graph.items() if v["_meta"]["title"] != "Rollout sampler"}
    with pytest.raises(ScienceT2IError, match="Rollout sampler"):
        ComfyRolloutClient(["http://127.0.0.1:8188"], graph)
