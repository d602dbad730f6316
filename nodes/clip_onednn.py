"""CLIP image towers on CPU through oneDNN, each linear layer fused with its bias, GELU or
residual add.

Why: PyTorch's fp32 matmul on CPU is MKL's sgemm, and MKL runs its AVX2 code on CPUs that are
not Intel's; oneDNN (bundled with PyTorch) JIT-compiles AVX-512 kernels for any CPU that has
it. On the AMD EPYC the benchmarks run on, a 2048^3 fp32 GEMM is ~2.5x faster through oneDNN
(benchmarks/score.py measures both). Fusing the bias, GELU and residual add into the GEMM also
saves a pass over the activations per op.

Only the transformer blocks are replaced; embeddings, pooling and projection are the model's
own modules. Weights are read from the live modules on every call (nothing is copied or
cached), so training updates, patched weights and device moves are always seen. The fused path
runs only for fp32 weights on CPU with autograd off; otherwise the functions return None and
the caller runs the model's own forward.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

# activation names (transformers' hidden_act) -> oneDNN's fused GELU algorithm
_HF_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when this PyTorch build has oneDNN and its fused linear ops."""
    try:
        ops = torch.ops.mkldnn
        return bool(torch.backends.mkldnn.is_available() and ops._linear_pointwise
                    and ops._linear_pointwise.binary)
    except (AttributeError, RuntimeError):
        return False


# Images per oneDNN call are capped so that a call's activations (rows x 4 x width floats for
# the MLP) stay in the CPU caches: on the benchmark machine a batch of 8 CLIP-H images
# (2056 rows) ran at 60-75% of the GEMM rate where batches of 1-4 (257-1028 rows) ran at 76-83%.
CHUNK_ROWS = 1100


@dataclass
class _Block:
    """One pre-norm transformer block: x += attn(ln1(x)); x += mlp(ln2(x))."""
    ln1: nn.LayerNorm
    qkv: list[tuple[torch.Tensor, torch.Tensor | None]]  # one fused [3D, D] projection, or q, k, v
    out: nn.Linear
    heads: int
    ln2: nn.LayerNorm
    fc1: nn.Linear
    fc2: nn.Linear
    gelu: str | None  # oneDNN's GELU algorithm, or None: apply ``act`` after the linear
    act: Callable[[torch.Tensor], torch.Tensor]


def _eligible(params: list[torch.Tensor], pixels: torch.Tensor) -> bool:
    """fp32 CPU weights (plain contiguous tensors) and input, no autograd to record, and
    oneDNN not switched off (``torch.backends.mkldnn.flags(enabled=False)``)."""
    if not available() or not torch.backends.mkldnn.enabled:
        return False
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return False
    return (pixels.device.type == "cpu" and pixels.dtype == torch.float32
            and all(p.device.type == "cpu" and p.dtype == torch.float32
                    and p.layout == torch.strided and p.is_contiguous() for p in params))


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            gelu: str | None = None) -> torch.Tensor:
    if gelu is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], gelu)


def _linear_add(x: torch.Tensor, residual: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) + residual in one oneDNN call."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")


def _attention(x: torch.Tensor, b: _Block, batch: int, tokens: int) -> torch.Tensor:
    d = x.shape[1]
    hd = d // b.heads
    if len(b.qkv) == 1:
        q, k, v = _linear(x, *b.qkv[0]).view(batch, tokens, 3, b.heads, hd).permute(2, 0, 3, 1, 4)
    else:
        q, k, v = (_linear(x, w, bias).view(batch, tokens, b.heads, hd).transpose(1, 2)
                   for w, bias in b.qkv)
    a = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as in CLIP
    return a.transpose(1, 2).reshape(batch * tokens, d)


def _run_block(h: torch.Tensor, b: _Block, batch: int, tokens: int) -> torch.Tensor:
    """h: [batch * tokens, D] -> the same after the block."""
    d = h.shape[1]
    x = F.layer_norm(h, (d,), b.ln1.weight, b.ln1.bias, b.ln1.eps)
    h = _linear_add(_attention(x, b, batch, tokens), h, b.out)
    x = F.layer_norm(h, (d,), b.ln2.weight, b.ln2.bias, b.ln2.eps)
    if b.gelu is not None:
        x = _linear(x, b.fc1.weight, b.fc1.bias, b.gelu)
    else:
        x = b.act(_linear(x, b.fc1.weight, b.fc1.bias))
    return _linear_add(x, h, b.fc2)


def _run_blocks(x: torch.Tensor, blocks: list[_Block]) -> torch.Tensor:
    """x: [batch, tokens, D] token embeddings -> the blocks' output, in cache-sized chunks."""
    batch, tokens, d = x.shape
    per_chunk = max(1, CHUNK_ROWS // tokens)
    out = []
    for chunk in x.split(per_chunk):
        n = chunk.shape[0]
        h = chunk.reshape(n * tokens, d).contiguous()
        for b in blocks:
            h = _run_block(h, b, n, tokens)
        out.append(h.view(n, tokens, d))
    return torch.cat(out) if len(out) > 1 else out[0]


# ----------------------------------------------------------------------------- transformers

def _hf_blocks(encoder: Any, hidden_act: str) -> list[_Block] | None:
    blocks = []
    for layer in encoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if attn.scale != attn.head_dim ** -0.5:
            return None
        # three projections, not one concatenated copy: no extra memory, and always the live
        # weights (the fused [3D, D] GEMM measured only a few percent faster)
        qkv = [(p.weight, p.bias) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        blocks.append(_Block(layer.layer_norm1, qkv, attn.out_proj, attn.num_heads,
                             layer.layer_norm2, mlp.fc1, mlp.fc2, _HF_GELU.get(hidden_act),
                             mlp.activation_fn))
    return blocks


def hf_image_features(clip: Any, pixels: torch.Tensor) -> torch.Tensor | None:
    """transformers CLIPModel.get_image_features (the projected pooled output), or None when
    the fused path does not apply."""
    vision = clip.vision_model
    params = list(vision.encoder.parameters())
    if not _eligible(params, pixels):
        return None
    blocks = _hf_blocks(vision.encoder, clip.config.vision_config.hidden_act)
    if blocks is None:
        return None
    x = vision.pre_layrnorm(vision.embeddings(pixels))
    x = _run_blocks(x, blocks)
    return clip.visual_projection(vision.post_layernorm(x[:, 0, :]))


# ----------------------------------------------------------------------------- open_clip

def _open_clip_blocks(transformer: Any) -> list[_Block] | None:
    blocks = []
    for r in transformer.resblocks:
        attn = getattr(r, "attn", None)
        if (not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None
                or attn.bias_k is not None or attn.add_zero_attn or hasattr(r, "ln_1_kv") or not isinstance(r.ls_1, nn.Identity)
                or not isinstance(r.ls_2, nn.Identity)
                or list(r.mlp._modules) != ["c_fc", "gelu", "c_proj"]):
            return None
        act = r.mlp.gelu
        gelu = act.approximate if isinstance(act, nn.GELU) else None
        blocks.append(_Block(r.ln_1, [(attn.in_proj_weight, attn.in_proj_bias)], attn.out_proj,
                             attn.num_heads, r.ln_2, r.mlp.c_fc, r.mlp.c_proj, gelu, act))
    return blocks


def open_clip_image_features(model: Any, pixels: torch.Tensor) -> torch.Tensor | None:
    """open_clip ``model.encode_image`` for the standard ViT, or None when the fused path
    does not apply (other towers, layer scale, attention pooling, ...)."""
    visual = getattr(model, "visual", None)
    transformer = getattr(visual, "transformer", None)
    if (transformer is None or not hasattr(visual, "_embeds") or not hasattr(visual, "_pool")
            or not getattr(transformer, "batch_first", False)
            or getattr(visual, "output_tokens", False)):
        return None
    if not _eligible(list(transformer.parameters()), pixels):
        return None
    blocks = _open_clip_blocks(transformer)
    if blocks is None:
        return None
    x = _run_blocks(visual._embeds(pixels), blocks)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled
