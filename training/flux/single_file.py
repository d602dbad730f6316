"""FLUX.1 from ComfyUI's own files: the transformer (BFL / ComfyUI layout, bf16 or fp8), CLIP-L,
T5-XXL (fp16 or fp8) and ``ae.safetensors``, found by name in ComfyUI's model folders or given
as paths.

Each file is recognised from its safetensors header before anything is loaded (a LoRA, an SDXL
checkpoint, a T5 given as CLIP, a truncated file: one line saying what it is). The component
configs are read off the headers (widths, depths, dev or schnell) with FLUX.1's constants,
and written with the tokenizers into a small folder (``<output_dir>/flux_files``) in the
diffusers layout, each component naming its weight file in ``single_file.json``; the loaders
in ``model`` read the weights from there: the transformer and the VAE through diffusers'
``from_single_file`` (its own key conversion), the text encoders into transformers' classes.
Nothing is downloaded: the CLIP tokenizer is built from open_clip's BPE vocabulary, the T5
tokenizer is ComfyUI's own (``comfy/text_encoders/t5_tokenizer``) or a folder you name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...nodes import _comfy
from ...nodes.errors import ScienceT2IError

MANIFEST = "single_file.json"
COMFY_PREFIX = "model.diffusion_model."
FLUX_WIDTH = 3072      # diffusers' FLUX.1 converter is written for this width
FP8 = ("F8_E4M3", "F8_E5M2")
# where ComfyUI keeps each kind (its folder names, the older ones too)
FOLDERS = {"transformer": ("diffusion_models", "unet", "checkpoints"),
           "clip": ("text_encoders", "clip"), "t5": ("text_encoders", "clip"), "vae": ("vae",)}
DEFAULT_NAMES = {"clip": ("clip_l.safetensors",),
                 "t5": ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors",
                        "t5xxl_fp8_e4m3fn_scaled.safetensors"),
                 "vae": ("ae.safetensors",)}
WHAT = {"lora": "a LoRA", "sd": "a Stable Diffusion / SDXL checkpoint",
        "flux-all-in-one": "a ComfyUI all-in-one FLUX checkpoint (transformer, VAE and text "
                           "encoders in one file)",
        "transformer": "a FLUX transformer", "clip": "a CLIP text encoder",
        "t5": "a T5 text encoder", "vae": "a FLUX VAE (ae.safetensors)",
        "sd-vae": "a Stable Diffusion VAE (4 latent channels, not FLUX's 16)",
        "unknown": "no model this pack knows"}
NOUN = {"transformer": "FLUX transformer", "clip": "CLIP-L text encoder",
        "t5": "T5-XXL text encoder", "vae": "FLUX VAE"}
SETTING = {"transformer": "model.path", "clip": "model.clip", "t5": "model.t5", "vae": "model.vae"}


def is_single_file(path: str) -> bool:
    return str(path).lower().endswith(".safetensors")


# ----------------------------------------------------------------------------- headers

def read_header(path: Path) -> dict[str, dict]:
    """The tensors a .safetensors file declares (name -> dtype, shape, offsets), checked
    against the file's size; no tensor is read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(size - 8, 256 << 20):
                raise ValueError("no safetensors header")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ScienceT2IError(f"{path} is not a readable .safetensors file ({exc}); download "
                              "it again.") from None
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise ScienceT2IError(f"{path} is truncated ({size:,} bytes of {8 + n + end:,}); the "
                              "download did not finish: download it again.")
    return header


def _strip(header: dict[str, dict]) -> dict[str, dict]:
    return {k[len(COMFY_PREFIX):] if k.startswith(COMFY_PREFIX) else k: v
            for k, v in header.items()}


def classify(header: dict[str, dict]) -> str:
    """What a file holds, from its tensor names (see ``WHAT``)."""
    names = set(_strip(header))
    if any(re.search(r"lora_(A|B|up|down)\b|\.alpha$|lokr_w|hada_w|dora_scale", k)
           for k in names):
        return "lora"
    has = lambda suffix: any(k.endswith(suffix) for k in names)   # noqa: E731
    if has("double_blocks.0.img_attn.norm.key_norm.scale"):
        return "flux-all-in-one" if any(k.startswith(("vae.", "text_encoders.")) for k in names) \
            else "transformer"
    if any(k.startswith(("conditioner.embedders", "first_stage_model.")) or "input_blocks." in k
           for k in names):
        return "sd"
    if has("embeddings.token_embedding.weight") and has("embeddings.position_embedding.weight"):
        return "clip"
    if has("SelfAttention.relative_attention_bias.weight") and "shared.weight" in names:
        return "t5"
    if "decoder.conv_in.weight" in names and "encoder.down.0.block.0.conv1.weight" in names:
        return "vae" if header_shape(header, "decoder.conv_in.weight")[1] == 16 else "sd-vae"
    return "unknown"


def header_shape(header: dict[str, dict], name: str) -> list[int]:
    return list(_strip(header)[name]["shape"])


def _count(names: Any, pattern: str) -> int:
    found = {int(m.group(1)) for k in names for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


# ----------------------------------------------------------------------------- configs

def transformer_config(header: dict[str, dict], path: Path) -> dict[str, Any]:
    h = _strip(header)
    if any(k.endswith((".scale_weight", ".weight_scale")) or k == "scaled_fp8" for k in h):
        raise ScienceT2IError(
            f"{path} is a FLUX transformer in ComfyUI's scaled fp8 format (weights with "
            "per-tensor scales), which diffusers cannot load: use flux1-dev.safetensors (bf16) "
            "or the plain fp8 file (flux1-dev-fp8-e4m3fn.safetensors).")
    width, in_channels = h["img_in.weight"]["shape"]
    if width != FLUX_WIDTH or in_channels % 4:
        raise ScienceT2IError(
            f"{path} is a FLUX transformer of width {width} with {in_channels} input channels: "
            "the trainers read FLUX.1 [dev] or [schnell] (width 3072, 64 input channels; Fill, "
            "Depth and Canny take extra image inputs).")
    return {"_class_name": "FluxTransformer2DModel", "patch_size": 1,
            "in_channels": in_channels, "out_channels": None,
            "num_layers": _count(h, r"double_blocks\.(\d+)\."),
            "num_single_layers": _count(h, r"single_blocks\.(\d+)\."),
            "attention_head_dim": 128, "num_attention_heads": width // 128,
            "joint_attention_dim": h["txt_in.weight"]["shape"][1],
            "pooled_projection_dim": h["vector_in.in_layer.weight"]["shape"][1],
            "guidance_embeds": "guidance_in.in_layer.weight" in h,
            "axes_dims_rope": [16, 56, 56]}


def vae_config(header: dict[str, dict]) -> dict[str, Any]:
    h = _strip(header)
    blocks = _count(h, r"encoder\.down\.(\d+)\.")
    return {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
            "latent_channels": h["decoder.conv_in.weight"]["shape"][1],
            "block_out_channels": [h[f"encoder.down.{i}.block.0.conv1.weight"]["shape"][0]
                                   for i in range(blocks)],
            "down_block_types": ["DownEncoderBlock2D"] * blocks,
            "up_block_types": ["UpDecoderBlock2D"] * blocks,
            "layers_per_block": _count(h, r"encoder\.down\.0\.block\.(\d+)\."),
            "norm_num_groups": 32, "act_fn": "silu", "sample_size": 1024,
            "mid_block_add_attention": True, "force_upcast": True,
            # FLUX.1's latent normalisation (its VAE config)
            "scaling_factor": 0.3611, "shift_factor": 0.1159,
            "use_quant_conv": False, "use_post_quant_conv": False}


def clip_config(header: dict[str, dict]) -> dict[str, Any]:
    h = {k.split("text_model.", 1)[-1]: v for k, v in _strip(header).items()}
    vocab, hidden = h["embeddings.token_embedding.weight"]["shape"]
    return {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"],
            "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": h["encoder.layers.0.mlp.fc1.weight"]["shape"][0],
            "num_hidden_layers": _count(h, r"encoder\.layers\.(\d+)\."),
            "num_attention_heads": max(1, hidden // 64),
            "max_position_embeddings": h["embeddings.position_embedding.weight"]["shape"][0],
            "projection_dim": hidden, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}


def t5_config(header: dict[str, dict]) -> dict[str, Any]:
    h = _strip(header)
    vocab, d_model = h["shared.weight"]["shape"]
    buckets, heads = h["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]["shape"]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in h
    ff = h["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    return {"model_type": "t5", "architectures": ["T5EncoderModel"], "vocab_size": vocab,
            "d_model": d_model, "d_ff": ff["shape"][0],
            "d_kv": h["encoder.block.0.layer.0.SelfAttention.q.weight"]["shape"][0] // heads,
            "num_heads": heads, "num_layers": _count(h, r"encoder\.block\.(\d+)\."),
            "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu" if gated else "relu", "dense_act_fn":
            "gelu_new" if gated else "relu", "is_gated_act": gated, "layer_norm_epsilon": 1e-6,
            "dropout_rate": 0.1, "pad_token_id": 0, "eos_token_id": 1,
            "decoder_start_token_id": 0, "is_encoder_decoder": False, "use_cache": False}


def scheduler_config(dev: bool) -> dict[str, Any]:
    """FLUX.1's scheduler: [dev] shifts with the image size, [schnell] does not."""
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
            "shift": 3.0 if dev else 1.0, "use_dynamic_shifting": dev, "base_shift": 0.5,
            "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


# ----------------------------------------------------------------------------- finding files

@dataclass
class FluxFiles:
    transformer: Path
    clip: Path
    t5: Path
    vae: Path
    t5_tokenizer: Path
    clip_tokenizer: Path | None   # None: built from open_clip's BPE vocabulary


def _find(kind: str, name: str) -> Path:
    """A file given as a path, or by name in ComfyUI's folders for ``kind``."""
    names = (name,) if name else DEFAULT_NAMES[kind]
    searched: list[Path] = []
    for candidate in names:
        p = Path(candidate).expanduser()
        if p.is_absolute() or p.exists():
            if p.is_file():
                return p
            searched.append(p)
            continue
        for folder in FOLDERS[kind]:
            for root in _comfy.folder_paths_for(folder):
                if (root / candidate).is_file():
                    return root / candidate
                searched.append(root / candidate)
    raise ScienceT2IError(
        f"{SETTING[kind]}: the {NOUN[kind]} file was not found (looked for "
        f"{', '.join(map(str, searched[:6]))}); give its path, or put it in ComfyUI's "
        f"models/{FOLDERS[kind][0]}/ (--models-dir).")


def _check_kind(path: Path, kind: str) -> dict[str, dict]:
    header = read_header(path)
    found = classify(header)
    if found != kind:
        hint = f" (give it as {SETTING[found]})" if found in SETTING else ""
        raise ScienceT2IError(f"{SETTING[kind]}: {path} is {WHAT[found]}{hint}, not "
                              f"{WHAT[kind]}.")
    return header


def comfyui_roots() -> list[Path]:
    """ComfyUI installations this process can see: the running one, the one whose models
    folder is in use, the one this pack sits in (custom_nodes/<pack>)."""
    roots = [r for r in (_comfy.comfyui_root(),) if r is not None]
    roots.append(_comfy.models_dir().parent)
    roots.append(Path(__file__).resolve().parents[3])
    return roots


def _t5_tokenizer(given: str) -> Path:
    candidates = []
    if given:
        g = Path(given).expanduser()
        candidates += [g / "tokenizer_2", g / "comfy" / "text_encoders" / "t5_tokenizer", g]
    candidates += [r / "comfy" / "text_encoders" / "t5_tokenizer" for r in comfyui_roots()]
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c / "spiece.model").is_file():
            return c
    raise ScienceT2IError(
        "FLUX's T5 tokenizer was not found (ComfyUI keeps it in comfy/text_encoders/"
        "t5_tokenizer): set model.tokenizers to your ComfyUI folder, or to a diffusers FLUX "
        "folder (its tokenizer_2/ is used).")


def find_files(model: Any) -> FluxFiles:
    """The four files of ``model`` (a ``ModelSection``: path, clip, t5, vae, tokenizers),
    each checked to be what its setting says."""
    files = {}
    for kind in ("transformer", "clip", "t5", "vae"):
        name = model.path if kind == "transformer" else getattr(model, kind)
        files[kind] = _find(kind, name)
        _check_kind(files[kind], kind)
    tok = Path(model.tokenizers).expanduser() / "tokenizer" if model.tokenizers else None
    return FluxFiles(**files, t5_tokenizer=_t5_tokenizer(model.tokenizers),
                     clip_tokenizer=tok if tok and (tok / "vocab.json").is_file() else None)


# ----------------------------------------------------------------------------- the folder

def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".model", ".txt"):
            tmp = dst / f".{f.name}.{os.getpid()}.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, dst / f.name)


def _clip_tokenizer(dst: Path, max_length: int) -> None:
    """CLIP's tokenizer from open_clip's BPE merges (the same vocabulary as OpenAI's CLIP):
    byte symbols, their end-of-word forms, the merges, then the two special tokens."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    bpe = default_bpe()
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab = {t: i for i, t in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}
    _write_json(dst / "vocab.json", vocab)
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    _write_json(dst / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "do_lower_case": True})


def write_flux_folder(files: FluxFiles, folder: Path) -> Path:
    """The diffusers-layout folder of configs and tokenizers for ``files`` (see module doc)."""
    headers = {k: read_header(getattr(files, k)) for k in ("transformer", "clip", "t5", "vae")}
    tconf = transformer_config(headers["transformer"], files.transformer)
    cconf = clip_config(headers["clip"])
    components = {"transformer": tconf, "vae": vae_config(headers["vae"]),
                  "text_encoder": cconf, "text_encoder_2": t5_config(headers["t5"])}
    for name, config in components.items():
        _write_json(folder / name / "config.json", config)
    for name, kind in (("transformer", "transformer"), ("vae", "vae"),
                       ("text_encoder", "clip"), ("text_encoder_2", "t5")):
        path = getattr(files, kind).resolve()
        _write_json(folder / name / MANIFEST, {"file": str(path), "fp8": is_fp8(headers[kind])})
    _write_json(folder / "scheduler" / "scheduler_config.json",
                scheduler_config(tconf["guidance_embeds"]))
    if files.clip_tokenizer is not None:
        _copy_tree(files.clip_tokenizer, folder / "tokenizer")
    else:
        _clip_tokenizer(folder / "tokenizer", cconf["max_position_embeddings"])
    _copy_tree(files.t5_tokenizer, folder / "tokenizer_2")
    _write_json(folder / "model_index.json", {
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]})
    return folder


def is_fp8(header: dict[str, dict]) -> bool:
    """Whether the file's large matrices are stored in fp8."""
    mats = [v["dtype"] for v in header.values() if len(v["shape"]) == 2]
    return bool(mats) and sum(d in FP8 for d in mats) * 2 > len(mats)


def single_file(component: Path) -> dict | None:
    """The weight file a component folder names (``single_file.json``), or None."""
    f = Path(component) / MANIFEST
    return json.loads(f.read_text()) if f.is_file() else None
