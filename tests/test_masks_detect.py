"""GroundingDINO detection end to end on a tiny random transformers model saved in the Hugging
Face layout: loading, the nodes, ComfyUI offload/progress/interrupt, bad inputs."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from science_t2i.nodes import masks
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.masks import node_classes as mask_nodes
from tiny_gdino import build_tiny_gdino

H, W = 128, 160


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_gdino(tmp_path_factory.mktemp("gdino") / "grounding-dino-tiny-test")


@pytest.fixture(scope="module")
def model(tiny_dir):
    return masks.load_grounding_dino(str(tiny_dir), device="cpu")


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    return torch.rand(3, H, W, 3)


def _direct_detection(tiny_dir, image, caption, box_t, text_t):
    """Detection straight through transformers' processor and model (no pack code)."""
    from transformers import AutoProcessor, GroundingDinoForObjectDetection
    proc = AutoProcessor.from_pretrained(str(tiny_dir))
    net = GroundingDinoForObjectDetection.from_pretrained(str(tiny_dir)).eval()
    inputs = proc(images=[image.permute(2, 0, 1)], text=[caption], do_rescale=False,
                  return_tensors="pt")
    with torch.no_grad():
        out = net(**inputs)
    return proc.post_process_grounded_object_detection(
        out, inputs["input_ids"], threshold=box_t, text_threshold=text_t,
        target_sizes=[(H, W)])[0]


def test_detect_matches_transformers_pipeline(model, tiny_dir, images):
    dets = model.detect(images[:1], "Ink stain", 0.5, 0.3)
    ref = _direct_detection(tiny_dir, images[0], "ink stain .", 0.5, 0.3)
    d = dets[0]
    assert (d.width, d.height) == (W, H)
    assert d.boxes.shape[0] == ref["boxes"].shape[0] > 0
    ref_boxes = ref["boxes"].clone()
    ref_boxes[:, 0::2] = ref_boxes[:, 0::2].clamp(0, W)
    ref_boxes[:, 1::2] = ref_boxes[:, 1::2].clamp(0, H)
    assert torch.allclose(d.boxes, ref_boxes, atol=1e-4)
    assert torch.allclose(d.scores, ref["scores"], atol=1e-5)
    assert all(p in ("", "ink", "stain", "ink stain") for p in d.phrases)


def test_each_image_is_detected_on_its_own(model, images):
    together = model.detect(images, "apple")
    for i in range(images.shape[0]):
        alone = model.detect(images[i:i + 1], "apple")[0]
        assert torch.allclose(together[i].boxes, alone.boxes, atol=1e-4)
        assert torch.allclose(together[i].scores, alone.scores, atol=1e-5)
    # a list of images of different sizes works too
    sizes = model.detect([images[0], images[1, :96, :128]], "apple")
    assert (sizes[1].width, sizes[1].height) == (128, 96)


def test_one_subject_per_image(model, images):
    mixed = model.detect(images[:2], ["apple", "ink stain"])
    assert torch.allclose(mixed[0].scores, model.detect(images[:1], "apple")[0].scores)
    assert torch.allclose(mixed[1].scores, model.detect(images[1:2], "ink stain")[0].scores)
    with pytest.raises(ScienceT2IError, match="2 subjects for 3 images"):
        model.detect(images, ["apple", "glass"])
    with pytest.raises(ScienceT2IError, match="subject text is empty"):
        model.detect(images[:2], ["apple", ""])


def test_thresholds_filter(model, images):
    low = model.detect(images[:1], "apple", 0.0, 0.0)[0]
    high = model.detect(images[:1], "apple", 0.9, 0.25)[0]
    assert low.boxes.shape[0] == model.model.config.num_queries
    assert bool((high.scores > 0.9).all()) and high.boxes.shape[0] < low.boxes.shape[0]
    none = model.detect(images[:1], "apple", 1.0, 0.25)[0]
    assert none.boxes.shape == (0, 4)


def test_grey_and_alpha_images_detect_as_rgb(model, images):
    grey = images[:1, ..., :1]
    a = model.detect(grey, "apple")[0]
    b = model.detect(grey.expand(-1, -1, -1, 3), "apple")[0]
    assert torch.allclose(a.boxes, b.boxes) and torch.allclose(a.scores, b.scores)
    rgba = torch.cat([images[:1], torch.rand(1, H, W, 1)], -1)
    c = model.detect(rgba, "apple")[0]
    d = model.detect(images[:1], "apple")[0]
    assert torch.allclose(c.boxes, d.boxes) and torch.allclose(c.scores, d.scores)


def test_subject_mask_node_end_to_end(model, images):
    node = mask_nodes.SubjectMaskNode()
    out = node.run(model, images, "apple", 0.35, 0.25, "merge", 0, 0)
    mask, boxes_json, preview, bounding = out["result"]
    assert mask.shape == (3, H, W) and mask.dtype == torch.float32
    assert preview.shape == (3, H, W, 3) and 0 <= preview.min() and preview.max() <= 1
    info = json.loads(boxes_json)
    assert len(info) == 3
    for i, item in enumerate(info):
        # the mask is exactly the merged box of the reported detections
        det = torch.tensor([d["box"] for d in item["detections"]]).reshape(-1, 4)
        box, fb = masks.subject_boxes(det, W, H, "merge")
        assert fb == item["no_detection"]
        assert torch.allclose(torch.tensor(item["mask_boxes"]), box, atol=0.02)
        # core's BOUNDING_BOX: per image, each detection as top-left corner and size in pixels
        assert len(bounding[i]) == len(item["detections"])
        for b, d in zip(bounding[i], item["detections"]):
            x0, y0, x1, y1 = d["box"]
            assert (b["x"], b["y"], b["width"], b["height"]) == pytest.approx(
                (x0, y0, x1 - x0, y1 - y0), abs=0.01)
            assert b["score"] == pytest.approx(d["score"], abs=1e-4) and b["label"] == d["phrase"]
        x0, y0, x1, y1 = item["mask_boxes"][0]
        assert mask[i].sum() == pytest.approx(
            masks.boxes_to_mask(torch.tensor([[x0, y0, x1, y1]]), H, W).sum(), abs=2 * (W + H))
    assert "3/3" in out["ui"]["text"][0]
    # nothing passes a threshold of 1: every image falls back to the whole image
    out = node.run(model, images[:2], "apple", 1.0, 0.25, "union", 4, 3)
    assert out["result"][0].min() == 1.0 and "0/2" in out["ui"]["text"][0]


def test_loader_node_lists_and_loads(models_dir, tiny_dir):
    folder = models_dir / "grounding-dino"
    shutil.copytree(tiny_dir, folder / "tiny")
    (folder / "bert-base-uncased").mkdir()
    (folder / "bert-base-uncased" / "config.json").write_text("{}")
    (folder / "groundingdino_swint_ogc.pth").write_bytes(b"")
    names = mask_nodes.GroundingDinoLoaderNode.INPUT_TYPES()["required"]["model_name"][0]
    assert "tiny" in names and "groundingdino_swint_ogc.pth" in names
    assert "tiny/model.safetensors" not in names and "bert-base-uncased" not in names
    assert masks.DEFAULT_GDINO in names
    (loaded,) = mask_nodes.GroundingDinoLoaderNode().load("tiny", "auto", 0)
    assert isinstance(loaded, masks.GroundingDinoModel) and loaded.backend == "transformers"
    # a hub id already downloaded into models/grounding-dino/<repo name> is used offline
    shutil.copytree(tiny_dir, folder / "grounding-dino-tiny")
    assert masks.load_grounding_dino(masks.DEFAULT_GDINO).backend == "transformers"


def test_image_size_override(tiny_dir):
    m = masks.load_grounding_dino(str(tiny_dir), image_size=64)
    seen = []
    forward = m.model.forward
    m.model.forward = lambda **kw: seen.append(kw["pixel_values"].shape) or forward(**kw)
    assert len(m.detect(torch.rand(1, H, W, 3), "apple")) == 1
    assert seen == [(1, 3, 64, 80)]
    with pytest.raises(ScienceT2IError, match="image_size"):
        masks.load_grounding_dino(str(tiny_dir), image_size=8)


def test_in_comfy_offload_progress_and_interrupt(comfy, tiny_dir):
    m = masks.load_grounding_dino(str(tiny_dir))
    assert type(m.handle).__name__ == "ModelPatcher"
    images = torch.rand(2, H, W, 3)
    m.detect(images, "apple")
    assert comfy.loaded and comfy.loaded[-1] is m.handle
    bar = comfy.progress[-1]
    assert bar.total == 2 and bar.current == 2
    comfy.interrupt = True
    from comfy_stub import InterruptProcessingException
    with pytest.raises(InterruptProcessingException):
        m.detect(images, "apple")


def test_models_folder_registered_in_comfy(comfy):
    from science_t2i.nodes import _comfy
    fp = comfy.folder_paths.folder_names_and_paths
    assert fp["grounding-dino"][0] == [str(comfy.models_dir / "grounding-dino")]
    assert fp["bert-base-uncased"][0] == [str(comfy.models_dir / "bert-base-uncased")]
    assert _comfy.default_folder("grounding-dino") == comfy.models_dir / "grounding-dino"


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("subject", ["", "   ", " . , "])
def test_empty_subject(model, images, subject):
    with pytest.raises(ScienceT2IError, match="subject text is empty"):
        model.detect(images[:1], subject)


def test_subject_longer_than_text_limit(model, images):
    long = " ".join(["apple"] * (model.max_text_len + 1))
    with pytest.raises(ScienceT2IError, match=r"tokens long.*at most 32"):
        model.detect(images[:1], long)


@pytest.mark.parametrize("box_t, text_t", [(-0.1, 0.25), (0.35, 1.5), (float("nan"), 0.2)])
def test_thresholds_outside_0_1(model, images, box_t, text_t):
    with pytest.raises(ScienceT2IError, match="between 0 and 1"):
        model.detect(images[:1], "apple", box_t, text_t)


def test_empty_batch_and_bad_channels(model):
    with pytest.raises(ScienceT2IError, match="empty"):
        model.detect(torch.zeros(0, H, W, 3), "apple")
    with pytest.raises(ScienceT2IError, match="empty"):
        model.detect([], "apple")
    with pytest.raises(ScienceT2IError, match="1, 3 or 4 channels"):
        model.detect(torch.rand(1, H, W, 2), "apple")
    with pytest.raises(ScienceT2IError, match="channels"):
        model.detect(torch.rand(1, 3, H, W), "apple")


def test_node_rejects_wrong_model_socket(images):
    with pytest.raises(ScienceT2IError, match="GroundingDINO Loader"):
        mask_nodes.SubjectMaskNode().run("not a model", images, "apple")


def test_dtype_choice(tiny_dir):
    assert masks.load_grounding_dino(str(tiny_dir)).dtype == torch.float32
    with pytest.raises(ScienceT2IError, match="dtype 'int8'"):
        masks.load_grounding_dino(str(tiny_dir), dtype="int8")


def test_unknown_model_name(models_dir):
    with pytest.raises(ScienceT2IError, match="not found in"):
        masks.load_grounding_dino("no-such-model")


def test_offline_hub_download_names_folder_and_command(models_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def offline(*a, **k):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ScienceT2IError) as err:
        masks.load_grounding_dino("IDEA-Research/grounding-dino-base")
    msg = str(err.value)
    target = models_dir / "grounding-dino" / "grounding-dino-base"
    assert f"hf download IDEA-Research/grounding-dino-base --local-dir {target}" in msg


def test_corrupt_transformers_folder(tmp_path, tiny_dir):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ScienceT2IError, match="corrupt"):
        masks.load_grounding_dino(str(bad))
