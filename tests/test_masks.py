"""Box merge, padding, clamping, fallback, feather and latent masks against hand-computed values
and the reference's formulas written out."""
from __future__ import annotations

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.masks.boxes import (boxes_to_mask, latent_mask, merge_boxes_cxcywh,
                                           paper_latent_box_mask, subject_boxes)
from science_t2i.nodes.masks.gdino import Detection
from science_t2i.nodes.masks.node_classes import MaskToLatentMaskNode
from science_t2i.nodes.masks.subject import masks_from_detections

W, H = 200, 100  # image width, height in the hand computations below


def reference_enclosing_box(boxes: torch.Tensor) -> torch.Tensor:
    """The Science-T2I reference's find_enclosing_box_cxcywh, written out."""
    if boxes.numel() == 0:
        return torch.tensor([0.5, 0.5, 1.0, 1.0])
    x_min = (boxes[:, 0] - boxes[:, 2] / 2).min()
    y_min = (boxes[:, 1] - boxes[:, 3] / 2).min()
    x_max = (boxes[:, 0] + boxes[:, 2] / 2).max()
    y_max = (boxes[:, 1] + boxes[:, 3] / 2).max()
    w, h = x_max - x_min, y_max - y_min
    w = w + 0.1 if w <= 0.9 else torch.tensor(1.0)
    h = h + 0.1 if h <= 0.9 else torch.tensor(1.0)
    return torch.stack([(x_min + x_max) / 2, (y_min + y_max) / 2, w, h])


def reference_latent_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reference's apply_box_mask, written out (valid for boxes inside the image)."""
    cx, cy, w, h = box.tolist()
    out = torch.zeros(height, width)
    out[int((cy - h / 2) * height):int((cy + h / 2) * height),
        int((cx - w / 2) * width):int((cx + w / 2) * width)] = 1
    return out


@pytest.mark.parametrize("boxes", [
    [[0.35, 0.4, 0.3, 0.4]],
    [[0.1, 0.2, 0.2, 0.4], [0.8, 0.75, 0.1, 0.3]],
    [[0.5, 0.3, 0.95, 0.4]],
    [],
])
def test_merge_equals_reference(boxes):
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    assert torch.allclose(merge_boxes_cxcywh(t), reference_enclosing_box(t), atol=1e-6)


@pytest.mark.parametrize("box, expected", [
    ((40, 20, 100, 60), (30, 15, 110, 65)),   # inside: +0.05 of W/H on each side
    ((0, 0, 50, 40), (0, 0, 60, 45)),         # at the top-left border: clamped
    ((150, 60, 200, 100), (140, 55, 200, 100)),  # at the bottom-right border
    ((5, 10, 195, 50), (0, 5, 200, 55)),      # wider than 0.9 W: width 1.0 around the centre
    ((30, 10, 200, 50), (20, 5, 200, 55)),    # 0.85 W wide: +0.1 -> 0.95, clamped at the right
])
def test_merge_pixel_boxes_by_hand(box, expected):
    out, fallback = subject_boxes(torch.tensor([box], dtype=torch.float32), W, H, "merge")
    assert not fallback
    assert out.shape == (1, 4)
    assert torch.allclose(out[0], torch.tensor(expected, dtype=torch.float32), atol=1e-3)


def test_merge_several_boxes_and_padding():
    boxes = torch.tensor([[10, 10, 30, 30], [150, 60, 170, 90]], dtype=torch.float32)
    out, _ = subject_boxes(boxes, W, H, "merge")
    # x 0.05..0.85 -> w 0.9 around 0.45 -> 0..0.9; y 0.1..0.9 -> h 0.9 around 0.5 -> 0.05..0.95
    assert torch.allclose(out[0], torch.tensor([0.0, 5.0, 180.0, 95.0]), atol=1e-3)
    padded, _ = subject_boxes(boxes, W, H, "merge", padding=10)
    assert torch.allclose(padded[0], torch.tensor([0.0, 0.0, 190.0, 100.0]), atol=1e-3)


def test_union_boxes_padding_clamped():
    boxes = torch.tensor([[10, 10, 30, 30], [150, 60, 195, 90]], dtype=torch.float32)
    out, fallback = subject_boxes(boxes, W, H, "union", padding=8)
    assert not fallback
    assert torch.allclose(out, torch.tensor([[2.0, 2.0, 38.0, 38.0], [142.0, 52.0, 200.0, 98.0]]))


@pytest.mark.parametrize("mode", ["merge", "union"])
def test_no_detection_is_whole_image(mode):
    out, fallback = subject_boxes(torch.zeros(0, 4), W, H, mode, padding=5)
    assert fallback
    assert out.tolist() == [[0.0, 0.0, 200.0, 100.0]]
    assert boxes_to_mask(out, H, W).min() == 1.0


def test_mask_pixels_by_hand():
    m = boxes_to_mask(torch.tensor([[30.0, 15.0, 110.0, 65.0]]), H, W)
    assert m.shape == (H, W)
    assert m.sum() == 80 * 50
    assert m[15:65, 30:110].min() == 1 and m[14].max() == 0 and m[:, 110].max() == 0
    # fractional edges: a pixel belongs to the box when its centre does
    m = boxes_to_mask(torch.tensor([[2.4, 0.0, 5.6, 1.0]]), 2, 8)
    assert m[0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0] and m[1].sum() == 0


def test_union_mask_is_or_of_boxes():
    a, b = [10.0, 10.0, 30.0, 30.0], [20.0, 20.0, 60.0, 40.0]
    m = boxes_to_mask(torch.tensor([a, b]), H, W)
    expected = torch.zeros(H, W)
    expected[10:30, 10:30] = 1
    expected[20:40, 20:60] = 1
    assert torch.equal(m, expected)


def test_feather_ramp_by_hand():
    # box touching the left, top and bottom borders: only its right edge (x=20) fades
    m = boxes_to_mask(torch.tensor([[0.0, 0.0, 20.0, 10.0]]), 10, 40, feather=4)
    row = m[5]
    # value = clamp((20 - (column + 0.5)) / 4, 0, 1)
    assert torch.allclose(row[14:21], torch.tensor([1.0, 1.0, 0.875, 0.625, 0.375, 0.125, 0.0]))
    assert torch.equal(m[:, :15], torch.ones(10, 15))  # no fade along the image border
    # an interior box fades on all four sides; the centre stays 1
    m = boxes_to_mask(torch.tensor([[10.0, 10.0, 30.0, 30.0]]), 40, 40, feather=2)
    assert m[20, 20] == 1.0 and m[10, 20] == pytest.approx(0.25) and m[20, 29] == pytest.approx(0.25)
    assert m[10, 10] == pytest.approx(0.25) and m[9, 20] == 0.0


def _det(boxes, w=W, h=H):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Detection(b, torch.full((b.shape[0],), 0.9), ["x"] * b.shape[0], w, h)


def test_batch_with_an_image_without_detection():
    dets = [_det([[40, 20, 100, 60]]), _det([]), _det([[0, 0, 50, 40]])]
    res = masks_from_detections(dets, "merge")
    assert res.mask.shape == (3, H, W)
    assert res.fallback == [False, True, False]
    assert res.mask[0].sum() == 80 * 50 and res.mask[0][15:65, 30:110].min() == 1
    assert res.mask[1].min() == 1.0
    assert res.mask[2].sum() == 60 * 45 and res.mask[2][:45, :60].min() == 1
    # each image's mask is the one it gets alone
    for i, d in enumerate(dets):
        assert torch.equal(masks_from_detections([d]).mask[0], res.mask[i])
    import json
    info = json.loads(res.to_json("merge"))
    assert [x["no_detection"] for x in info] == [False, True, False]
    assert info[1]["merged_cxcywh"] == [0.5, 0.5, 1.0, 1.0]


def test_box_mode_and_padding_errors():
    with pytest.raises(ScienceT2IError, match="mask mode"):
        subject_boxes(torch.zeros(0, 4), W, H, "intersection")
    with pytest.raises(ScienceT2IError, match="padding"):
        subject_boxes(torch.zeros(0, 4), W, H, "merge", padding=-1)
    with pytest.raises(ScienceT2IError, match="feather"):
        boxes_to_mask(torch.zeros(0, 4), H, W, feather=-2)


@pytest.mark.parametrize("h, w, unpacked, packed", [
    (512, 512, (64, 64), (32, 32)),
    (512, 768, (64, 96), (32, 48)),
    (768, 512, (96, 64), (48, 32)),
    (520, 300, (65, 37), (32, 18)),
])
def test_latent_mask_sizes(h, w, unpacked, packed):
    mask = torch.rand(2, h, w)
    assert latent_mask(mask).shape == (2, *unpacked)
    assert latent_mask(mask, packed=True).shape == (2, *packed)
    assert latent_mask(mask[0]).shape == (1, *unpacked)


def test_latent_mask_area_average_by_hand():
    mask = torch.zeros(1, 32, 48)
    mask[0, 3:13, 0:8] = 1  # 10 rows x 8 cols
    grid = latent_mask(mask)  # 4 x 6 cells of 8x8 pixels
    # cell (0,0) holds rows 3..7 -> 5/8; cell (1,0) rows 8..12 -> 5/8; others 0
    expected = torch.zeros(1, 4, 6)
    expected[0, 0, 0] = expected[0, 1, 0] = 5 / 8
    assert torch.allclose(grid, expected)
    packed = latent_mask(mask, packed=True)  # 2 x 3 cells of 16x16 pixels
    expected = torch.zeros(1, 2, 3)
    expected[0, 0, 0] = 10 * 8 / 256
    assert torch.allclose(packed, expected)


def test_latent_dilation():
    mask = torch.zeros(1, 64, 64)
    mask[0, 24:32, 32:40] = 1  # exactly latent cell (3, 4)
    grid = latent_mask(mask, dilation=1)
    expected = torch.zeros(1, 8, 8)
    expected[0, 2:5, 3:6] = 1
    assert torch.equal(grid, expected)


def test_packed_latent_mask_follows_flux_token_order():
    from diffusers import FluxPipeline
    torch.manual_seed(0)
    mask = (torch.rand(2, 128, 192) > 0.5).float()
    unpacked = latent_mask(mask)  # [2, 16, 24]
    latents = unpacked[:, None].expand(-1, 16, -1, -1).contiguous()
    tokens = FluxPipeline._pack_latents(latents, 2, 16, 16, 24)  # [2, 8*12, 64]
    assert torch.allclose(latent_mask(mask, packed=True).flatten(1), tokens.mean(-1), atol=1e-6)


def test_latent_mask_errors_and_node():
    with pytest.raises(ScienceT2IError, match="smaller than one latent cell"):
        latent_mask(torch.ones(1, 12, 12), packed=True)
    with pytest.raises(ScienceT2IError, match="MASK"):
        latent_mask(torch.ones(2, 2, 3, 3))
    with pytest.raises(ScienceT2IError, match="dilation"):
        latent_mask(torch.ones(1, 16, 16), dilation=-1)
    node = MaskToLatentMaskNode()
    (out,) = node.run(torch.ones(1, 512, 512), 8, "flux 2x2", 0)
    assert out.shape == (1, 32, 32) and out.min() == 1
    with pytest.raises(ScienceT2IError, match="packing"):
        node.run(torch.ones(1, 64, 64), 8, "3x3", 0)


@pytest.mark.parametrize("box", [
    [0.5, 0.5, 0.5, 0.25], [0.3, 0.6, 0.35, 0.5], [0.7, 0.45, 0.33, 0.71], [0.5, 0.5, 1.0, 1.0]])
def test_paper_latent_box_mask_equals_reference(box):
    b = torch.tensor([box])
    out = paper_latent_box_mask(b, 64, 64)
    assert out.shape == (1, 64, 64)
    assert torch.equal(out[0], reference_latent_mask(b[0], 64, 64))


def test_paper_latent_box_mask_by_hand():
    out = paper_latent_box_mask(torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.3, 0.5, 0.35, 1.0]]), 64, 64)
    # x 16..48, y 24..40 -> rows 24..39, cols 16..47
    assert out[0].sum() == 16 * 32 and out[0, 24:40, 16:48].min() == 1
    # x1 = 0.125*64 = 8, x2 = 0.475*64 = 30.4 -> cols 8..29
    assert out[1].sum() == 64 * 22 and out[1, :, 8:30].min() == 1
    # a box reaching past the left border starts at column 0 (not wrapped around)
    edge = paper_latent_box_mask(torch.tensor([[0.1, 0.5, 0.3, 0.5]]), 64, 64)
    assert edge[0, 16:48, 0:16].min() == 1 and edge[0].sum() == 32 * 16
