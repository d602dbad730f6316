"""Tiny random FLUX pipelines in the diffusers directory layout, built offline for tests.

Same classes and on-disk layout as black-forest-labs/FLUX.1-dev (model_index.json, transformer/,
vae/, text_encoder/ = CLIP, text_encoder_2/ = T5, tokenizer/, tokenizer_2/, scheduler/), with
configs small enough that a training step takes milliseconds on CPU.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from tiny_clip import byte_chars


@dataclass
class TinyFluxSpec:
    latent_channels: int = 4           # transformer in_channels = 4 * this (2x2 packing)
    vae_blocks: tuple[int, ...] = (8, 8)  # 2 blocks: images are downsampled 2x
    clip_hidden: int = 32              # = transformer pooled_projection_dim
    t5_hidden: int = 32                # = transformer joint_attention_dim
    t5_max_length: int = 32
    heads: int = 2
    head_dim: int = 16                 # = sum(axes_dims_rope)
    axes_dims_rope: tuple[int, int, int] = (4, 4, 8)
    num_layers: int = 1
    num_single_layers: int = 1
    guidance_embeds: bool = False


def _clip_tokenizer(folder: Path):
    """A byte-level BPE CLIP tokenizer over single characters (no merges): any text encodes."""
    from transformers import CLIPTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_chars()
    vocab: dict[str, int] = {}
    for tok in ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                        model_max_length=77)
    return tok, len(vocab)


def _t5_tokenizer(max_length: int):
    """A character-level tokenizer standing in for T5's sentencepiece (WordLevel over chars)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in string.printable:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>", model_max_length=max_length)
    return tok, len(vocab)


def build_tiny_flux_pipeline(folder: str | Path, spec: TinyFluxSpec | None = None,
                             seed: int = 0):
    """Build a random tiny FluxPipeline, save it under ``folder`` and return the pipeline."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                           FluxTransformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    spec = spec or TinyFluxSpec()
    folder = Path(folder)
    torch.manual_seed(seed)
    clip_tok, clip_vocab = _clip_tokenizer(folder / "_tok_src")
    t5_tok, t5_vocab = _t5_tokenizer(spec.t5_max_length)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=clip_vocab, hidden_size=spec.clip_hidden, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=spec.clip_hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        hidden_act="gelu", layer_norm_eps=1e-5))
    t5 = T5EncoderModel(T5Config(
        vocab_size=t5_vocab, d_model=spec.t5_hidden, d_kv=8, d_ff=37, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=spec.latent_channels,
        block_out_channels=tuple(spec.vae_blocks),
        down_block_types=("DownEncoderBlock2D",) * len(spec.vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(spec.vae_blocks),
        layers_per_block=1, norm_num_groups=min(spec.vae_blocks[0], 4), sample_size=32,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * spec.latent_channels, num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers, attention_head_dim=spec.head_dim,
        num_attention_heads=spec.heads, joint_attention_dim=spec.t5_hidden,
        pooled_projection_dim=spec.clip_hidden, guidance_embeds=spec.guidance_embeds,
        axes_dims_rope=tuple(spec.axes_dims_rope))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    import shutil
    shutil.rmtree(folder / "_tok_src", ignore_errors=True)
    return pipe


def image_size_for(spec: TinyFluxSpec | None = None, latent_size: int = 8) -> int:
    """Pixel size giving a ``latent_size`` x ``latent_size`` latent (must be even to pack)."""
    spec = spec or TinyFluxSpec()
    return latent_size * 2 ** (len(spec.vae_blocks) - 1)
