"""Tiny random CLIP models saved in the real release formats, built offline.

- ``build_tiny_clip(dir)``: a transformers CLIPModel directory laid out like
  ``Jialuo21/SciScore`` (config.json, model.safetensors, vocab.json + merges.txt + tokenizer
  config for a CLIPTokenizer, preprocessor_config.json).
- ``build_tiny_open_clip(dir)``: an open_clip ViT checkpoint as .safetensors with the
  ``open_clip_config.json`` that open_clip hub releases ship beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2 / CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: Path, words: tuple[str, ...] = (
        "apple", "unripe", "green", "red", "ice", "water", "frozen", "the", "an", "a", "on",
        "table", "glass", "of")) -> int:
    """Write vocab.json / merges.txt / tokenizer_config.json / special_tokens_map.json.

    Every byte is in the vocabulary (so any text tokenises) and a few whole words have merges,
    like the real CLIP BPE. End-of-text gets the highest id, as in CLIP, so pooling the
    argmax id finds it. Returns the vocabulary size.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_chars()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in words:
        # merge left to right: "a p" -> "ap", "ap p" -> "app", ..., last piece carries </w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        cur = pieces[0]
        for nxt in pieces[1:]:
            merge = f"{cur} {nxt}"
            if merge not in merges:
                merges.append(merge)
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
    }), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
    }), encoding="utf-8")
    return len(vocab)


def write_preprocessor_config(folder: Path, image_size: int, crop_size: int | None = None,
                              mean: list[float] = CLIP_MEAN, std: list[float] = CLIP_STD) -> None:
    crop = crop_size or image_size
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": crop, "width": crop},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(mean), "image_std": list(std), "do_convert_rgb": True,
    }), encoding="utf-8")


def tiny_clip_config(vocab_size: int, image_size: int = 32, patch_size: int = 8,
                     hidden: int = 32, layers: int = 2, heads: int = 2, projection_dim: int = 16):
    from transformers import CLIPConfig
    text = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                hidden_act="gelu", projection_dim=projection_dim,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                  hidden_act="gelu", projection_dim=projection_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim,
                      logit_scale_init_value=2.6592)


def build_tiny_clip(folder: str | Path, image_size: int = 32, seed: int = 0,
                    crop_size: int | None = None, logit_scale: float | None = None) -> Path:
    """A random tiny CLIPModel saved like the SciScore release; returns the folder.

    ``logit_scale`` (the raw log value) overrides CLIP's init so tests can tell a score from a
    plain cosine.
    """
    from transformers import CLIPModel
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_clip_tokenizer(folder)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(vocab_size, image_size=crop_size or image_size)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale if logit_scale is not None else 2.0 + seed * 0.1)
    model.save_pretrained(str(folder), safe_serialization=True)
    write_preprocessor_config(folder, image_size, crop_size)
    return folder


TINY_OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                   "patch_size": 8},
    # the real CLIP BPE vocabulary ships inside open_clip, so the text tower keeps its size
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 2},
}


def build_tiny_open_clip(folder: str | Path, seed: int = 0,
                         name: str = "open_clip_model.safetensors") -> Path:
    """A random tiny open_clip ViT saved as safetensors + open_clip_config.json; returns the
    .safetensors path."""
    import open_clip
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_OPEN_CLIP_CFG).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
    path = folder / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_OPEN_CLIP_CFG,
        "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD,
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }), encoding="utf-8")
    return path


def pil_clip_processor() -> type:
    """The PIL-based CLIPImageProcessor the reference implementation ran (transformers 4.x's
    CLIPImageProcessor; transformers 5 names it CLIPImageProcessorPil)."""
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor
        return CLIPImageProcessor


def reference_sciscore(folder: str | Path, images: list, prompts: list[str]) -> torch.Tensor:
    """SciScore computed the way the paper's evaluation code does it, independently of the
    pack: CLIPProcessor-style preprocessing (CLIPImageProcessor on PIL images, the tokenizer
    with padding/truncation to 77), the raw CLIPModel features, L2 normalisation, and
    exp(logit_scale) * cosine. ``images``: PIL images; ``prompts``: one per image."""
    from transformers import AutoTokenizer, CLIPModel
    folder = str(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    processor = pil_clip_processor().from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pixels)
        tok = tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        txt = model.get_text_features(**tok)
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * (img * txt).sum(-1)


def random_uint8_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE batch [n,H,W,3] with smooth structure and values on the 1/255 grid (so
    PIL and tensor pipelines see the very same pixels)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear",
                                          align_corners=False)
    img = (img + 0.15 * torch.rand(n, 3, height, width, generator=g)).clamp(0, 1)
    return ((img * 255).round() / 255).permute(0, 2, 3, 1).contiguous()
