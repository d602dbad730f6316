"""CLIP's image and text towers on CPU through oneDNN, each linear layer fused with its bias,
GELU or residual add (transformers CLIPModel and open_clip CLIP).

Why: PyTorch's fp32 matmul on CPU is MKL's sgemm, and MKL runs its AVX2 code on CPUs that are
not Intel's; oneDNN (bundled with PyTorch) JIT-compiles AVX-512 kernels for any CPU that has
it. On the AMD EPYC the benchmarks run on, a 2048^3 fp32 GEMM is ~2.5x faster through oneDNN
(benchmarks/score.py measures both). Fusing the bias, GELU and residual add into the GEMM also
saves a pass over the activations per op.

Only the transformer blocks are replaced; embeddings, norms and projections are the model's
own modules, and pooling picks the same token the libraries do. Weights are read from the live modules on every call (nothing is copied or
cached), so training updates, patched weights and device moves are always seen. The fused path
runs only for fp32 weights on CPU with autograd off (and right-padded text); otherwise the
functions return None and the caller runs the model's own forward.
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


def _eligible(params: list[torch.Tensor], inputs: torch.Tensor) -> bool:
    """fp32 CPU weights (plain contiguous tensors), CPU inputs (fp32 if floating point), no
    autograd to record, and oneDNN not switched off (``torch.backends.mkldnn.enabled``)."""
    if not available() or not torch.backends.mkldnn.enabled:
        return False
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return False
    if inputs.device.type != "cpu" or (inputs.is_floating_point()
                                       and inputs.dtype != torch.float32):
        return False
    return all(p.device.type == "cpu" and p.dtype == torch.float32
               and p.layout == torch.strided and p.is_contiguous() for p in params)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            gelu: str | None = None) -> torch.Tensor:
    if gelu is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], gelu)


def _linear_add(x: torch.Tensor, residual: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) + residual in one oneDNN call."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")


def _attention(x: torch.Tensor, b: _Block, batch: int, tokens: int,
               causal: bool) -> torch.Tensor:
    d = x.shape[1]
    hd = d // b.heads
    if len(b.qkv) == 1:
        q, k, v = _linear(x, *b.qkv[0]).view(batch, tokens, 3, b.heads, hd).permute(2, 0, 3, 1, 4)
    else:
        q, k, v = (_linear(x, w, bias).view(batch, tokens, b.heads, hd).transpose(1, 2)
                   for w, bias in b.qkv)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # scale 1/sqrt(head_dim)
    return a.transpose(1, 2).reshape(batch * tokens, d)


def _run_block(h: torch.Tensor, b: _Block, batch: int, tokens: int,
               causal: bool = False) -> torch.Tensor:
    """h: [batch * tokens, D] -> the same after the block."""
    d = h.shape[1]
    x = F.layer_norm(h, (d,), b.ln1.weight, b.ln1.bias, b.ln1.eps)
    h = _linear_add(_attention(x, b, batch, tokens, causal), h, b.out)
    x = F.layer_norm(h, (d,), b.ln2.weight, b.ln2.bias, b.ln2.eps)
    x = _linear(x, b.fc1.weight, b.fc1.bias, b.gelu)
    if b.gelu is None:  # an activation oneDNN has no fused form of (QuickGELU, ...)
        x = b.act(x)
    return _linear_add(x, h, b.fc2)


def _run_blocks(x: torch.Tensor, blocks: list[_Block], causal: bool = False) -> torch.Tensor:
    """x: [batch, tokens, D] token embeddings -> the blocks' output, in cache-sized chunks.
    ``causal``: each token attends to itself and the tokens before it (text towers)."""
    batch, tokens, d = x.shape
    per_chunk = max(1, CHUNK_ROWS // tokens)
    out = []
    for chunk in x.split(per_chunk):
        n = chunk.shape[0]
        h = chunk.reshape(n * tokens, d).contiguous()
        for b in blocks:
            h = _run_block(h, b, n, tokens, causal)
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


def _right_padded(mask: torch.Tensor | None) -> bool:
    """Every row is ones then zeros: causal attention alone then keeps the padding out of
    every real token, the pooled end-of-text one included."""
    if mask is None:
        return True
    return bool(torch.equal(mask, mask.sort(dim=-1, descending=True).values))


def hf_text_features(clip: Any, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """transformers CLIPModel.get_text_features for right-padded token ids, or None when the
    fused path does not apply."""
    text = clip.text_model
    if not _eligible(list(text.encoder.parameters()), input_ids) or not _right_padded(
            attention_mask):
        return None
    blocks = _hf_blocks(text.encoder, clip.config.text_config.hidden_act)
    if blocks is None:
        return None
    x = _run_blocks(text.embeddings(input_ids=input_ids), blocks, causal=True)
    ids = input_ids.to(torch.int)
    eos = getattr(text, "eos_token_id", 2)
    # the pooled token, chosen as transformers does (argmax id for legacy configs with eos 2)
    at = ids.argmax(dim=-1) if eos == 2 else (ids == eos).int().argmax(dim=-1)
    pooled = text.final_layer_norm(x[torch.arange(x.shape[0]), at])  # per-token norm
    return clip.text_projection(pooled)


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


def _causal(mask: torch.Tensor | None, tokens: int) -> bool | None:
    """open_clip's additive text mask -> causal or not; None for any other mask."""
    if mask is None:
        return False
    if mask.shape != (tokens, tokens):
        return None
    above = torch.ones(tokens, tokens, dtype=torch.bool, device=mask.device).triu(1)
    ok = bool(torch.equal(torch.isneginf(mask), above) and not mask[~above].any())
    return True if ok else None


def open_clip_text_features(model: Any, text: torch.Tensor) -> torch.Tensor | None:
    """open_clip ``model.encode_text`` for its standard CLIP text tower (argmax pooling), or
    None when the fused path does not apply."""
    transformer = getattr(model, "transformer", None)
    if (transformer is None or getattr(model, "text_pool_type", None) != "argmax"
            or not getattr(transformer, "batch_first", False)
            or not hasattr(model, "token_embedding")
            or text.shape[-1] != model.positional_embedding.shape[0]):
        return None
    if not _eligible(list(transformer.parameters()), text):
        return None
    causal = _causal(getattr(model, "attn_mask", None), text.shape[-1])
    blocks = _open_clip_blocks(transformer)
    if causal is None or blocks is None:
        return None
    x = model.token_embedding(text) + model.positional_embedding
    x = _run_blocks(x, blocks, causal=causal)
    pooled = model.ln_final(x[torch.arange(x.shape[0]), text.argmax(dim=-1)])
    proj = model.text_projection
    if proj is None:
        return pooled
    return proj(pooled) if isinstance(proj, nn.Module) else pooled @ proj
