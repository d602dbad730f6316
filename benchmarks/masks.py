"""Subject-mask speed on CPU: GroundingDINO detection + merged-box masks, images/s.

Two random-weight models in the Hugging Face layout, measured side by side in one run:
- the tiny test model (tests/tiny_gdino.py), at its 128 px and at 512 px;
- a GroundingDINO-T-shaped model (Swin-T backbone, BERT-base text encoder, 6 encoder + 6
  decoder layers, d_model 256, 900 queries: the shape of groundingdino_swint_ogc.pth and
  IDEA-Research/grounding-dino-tiny) at 512 px (shorter side).
For each: the pack's path (``subject_masks``: preprocessing, model, post-processing, merge,
mask) against a bare ``model(**inputs)`` forward on already-prepared inputs, so the ratio is
the pack's overhead. ``--check-conversion`` also writes the T-shaped model in the original
.pth layout, converts it back and reports the largest output difference.

    python benchmarks/masks.py [--images 4] [--threads 2] [--check-conversion]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import builders  # benchmarks/ is the script's own folder
import torch

os.environ.setdefault("SCIENCE_T2I_NO_PROGRESS", "1")


def build_t_shaped(directory: Path, tiny) -> Path:
    """GroundingDINO-T's shape with random weights, saved with the tiny tokenizer."""
    from transformers import (BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)
    swin = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                      image_size=224, out_indices=[2, 3, 4])
    config = GroundingDinoConfig(backbone_config=swin.to_dict(), text_config=BertConfig().to_dict())
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(directory)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(),
                           tokenizer=tiny.tiny_bert_tokenizer()).save_pretrained(directory)
    return directory


def measure(model_dir: Path, size: int, n_images: int, repeats: int) -> dict:
    from science_t2i.nodes.masks.gdino import load_grounding_dino, prepare_caption
    from science_t2i.nodes.masks.subject import subject_masks
    m = load_grounding_dino(str(model_dir), device="cpu", image_size=size)
    torch.manual_seed(1)
    images = torch.rand(n_images, size, size, 3)
    subject = "glass"
    # bare forward on prepared inputs (what the model alone costs)
    enc = m.tokenize(prepare_caption(subject))
    pix = m.processor.image_processor(images=[images[0].permute(2, 0, 1)], do_rescale=False,
                                      return_tensors="pt", size=m.resize)
    with torch.inference_mode():
        m.model(pixel_values=pix["pixel_values"], pixel_mask=pix["pixel_mask"], **enc)  # warm-up
        t_bare, t_pack = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n_images):
                m.model(pixel_values=pix["pixel_values"], pixel_mask=pix["pixel_mask"], **enc)
            t_bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = subject_masks(m, images, subject)
            t_pack.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in m.model.parameters())
    bare, pack = min(t_bare), min(t_pack)
    return {"params_m": params / 1e6, "bare_ips": n_images / bare, "pack_ips": n_images / pack,
            "overhead": pack / bare, "mask_shape": tuple(res.mask.shape)}


def check_conversion(tiny, directory: Path) -> float:
    """Full-size round trip through the original .pth layout: largest |output difference|."""
    from safetensors.torch import load_file
    from science_t2i.nodes.masks.gdino_original import load_original_checkpoint
    from transformers import BertConfig, GroundingDinoForObjectDetection
    src = GroundingDinoForObjectDetection.from_pretrained(str(directory)).eval()
    orig = directory.parent / "original"
    orig.mkdir(exist_ok=True)
    state = tiny.to_original_state_dict(load_file(str(directory / "model.safetensors")),
                                        src.config.decoder_layers)
    torch.save({"model": state}, orig / "groundingdino_swint_ogc.pth")
    cfg = tiny.original_cfg_text().splitlines()
    released = {"enc_layers": 6, "dec_layers": 6, "dim_feedforward": 2048, "hidden_dim": 256,
                "nheads": 8, "num_queries": 900, "enc_n_points": 4, "dec_n_points": 4,
                "max_text_len": 256}
    lines = [ln for ln in cfg if not ln.startswith("swin_")]
    lines = [f"{ln.split(' = ')[0]} = {released[ln.split(' = ')[0]]}"
             if ln.split(" = ")[0] in released else ln for ln in lines]
    (orig / "GroundingDINO_SwinT_OGC.cfg.py").write_text("\n".join(lines) + "\n")
    tiny.write_tiny_bert_files(orig / "bert-base-uncased", BertConfig())
    converted, _ = load_original_checkpoint(orig / "groundingdino_swint_ogc.pth")
    torch.manual_seed(2)
    pixels = torch.randn(1, 3, 256, 256)
    ids = tiny.tiny_bert_tokenizer()(["glass . ink stain ."], return_tensors="pt")
    with torch.inference_mode():
        a, b = src(pixel_values=pixels, **ids), converted(pixel_values=pixels, **ids)
    finite = torch.isfinite(a.logits)
    return max((a.logits[finite] - b.logits[finite]).abs().max().item(),
               (a.pred_boxes - b.pred_boxes).abs().max().item())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4, help="images per measured batch (the "
                    "GroundingDINO-T-shaped model gets a quarter of them, at least one)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats (best is reported)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--check-conversion", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tiny = builders.load("tiny_gdino")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny_dir = tiny.build_tiny_gdino(tmp / "tiny")
        t_dir = build_t_shaped(tmp / "t-shaped" / "hf", tiny)
        # the tiny model is cheap: more repeats make its figures steadier on a busy machine
        tiny_repeats = max(args.repeats, 5)
        rows = [("tiny", 128, measure(tiny_dir, 128, args.images, tiny_repeats)),
                ("tiny", 512, measure(tiny_dir, 512, args.images, tiny_repeats)),
                ("GroundingDINO-T shape", 512,
                 measure(t_dir, 512, max(1, args.images // 4), args.repeats))]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"CPU threads: {args.threads}, torch {torch.__version__}, "
              f"load average {load:.1f} on {os.cpu_count()} cores")
        print(f"{'model':24} {'px':>5} {'params':>8} {'bare fwd img/s':>15} "
              f"{'subject_masks img/s':>20} {'pack/bare time':>15}")
        for name, size, r in rows:
            print(f"{name:24} {size:5d} {r['params_m']:7.1f}M {r['bare_ips']:15.3f} "
                  f"{r['pack_ips']:20.3f} {r['overhead']:15.3f}")
        if args.check_conversion:
            diff = check_conversion(tiny, t_dir)
            print(f"original .pth layout -> converted, GroundingDINO-T shape: max |diff| = {diff:.2e}")


if __name__ == "__main__":
    sys.exit(main())
