"""CLIP's image and text towers on CPU through oneDNN, each linear layer fused with its bias,
GELU or residual add (transformers CLIPModel and open_clip CLIP).

Why: PyTorch's fp32 matmul on CPU is MKL's sgemm, and MKL runs its AVX2 code on CPUs that are
not Intel's; oneDNN (bundled with PyTorch) JIT-compiles AVX-512 kernels for any CPU that has
it. Fusing the bias, GELU and residual add into the GEMM also saves a pass over the
activations per op. Whether that wins depends on the CPU: on an AVX-512 AMD EPYC the towers
ran 1.1-1.2x faster than transformers' forward, on an AVX2-only one 0.85x. So the scorer's
default ("auto", ``auto_choice``) takes this path only on CPUs with AVX-512 where a quick
measurement of the model's own layer shows it faster (benchmarks/score.py compares both).

Only the transformer blocks are replaced; embeddings, norms and projections are the model's
own modules, and pooling picks the same token the libraries do. Weights are read from the live modules on every call (nothing is copied or
cached), so training updates, patched weights and device moves are always seen. The fused path
runs only for fp32 weights on CPU with autograd off (and right-padded text); otherwise the
functions return None and the caller runs the model's own forward.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("science_t2i")

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


# ----------------------------------------------------------------------------- auto: which path

class Choice(NamedTuple):
    """The forward CPU scoring runs, "onednn" or "pytorch", and why."""
    path: str
    reason: str


# The measurement: the first image block's attention output projection (live weights, [D, D])
# with its residual add on MEASURE_ROWS random rows, through oneDNN's fused op and as the
# libraries run it (F.linear, then +), alternating; each path's best time counts (background
# load only ever adds time). On the benchmark machine the ratio measured the same at 64-256
# rows (half a CLIP-H image is 128 tokens); deciding for CLIP-H took ~45 ms at 1 thread.
MEASURE_ROWS = 128
MEASURE_PAIRS = (3, 20)  # at least, at most this many alternations
MEASURE_BUDGET_S = 0.02  # alternations beyond the minimum only while under this
# oneDNN only when its layer is at least this much faster: a smaller gain is within the
# measurement's noise and the gap between one layer and the whole tower, and PyTorch's
# forward is the safe side to err on (at worst this much slower than oneDNN, never slower
# than itself).
MARGIN = 1.05

LABELS = {"onednn": "oneDNN's fused towers", "pytorch": "PyTorch's own forward"}
_choices: dict[tuple, Choice] = {}  # (threads, layer shape) -> the decision, once per process


def cpu_capability() -> str:
    """ATen's CPU capability: "AVX512", "AVX2", "DEFAULT", "SVE256", ..."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def _sample_block(model: Any) -> _Block | None:
    """The first block of the image tower (transformers or open_clip), or None."""
    vision = getattr(model, "vision_model", None)
    if vision is not None and hasattr(getattr(vision, "encoder", None), "layers"):
        layers = SimpleNamespace(layers=vision.encoder.layers[:1])
        blocks = _hf_blocks(layers, model.config.vision_config.hidden_act)
    else:
        transformer = getattr(getattr(model, "visual", None), "transformer", None)
        if not hasattr(transformer, "resblocks"):
            return None
        blocks = _open_clip_blocks(SimpleNamespace(resblocks=transformer.resblocks[:1]))
    return blocks[0] if blocks else None


def measure(block: _Block, rows: int = MEASURE_ROWS) -> tuple[float, float]:
    """Best seconds of the block's output projection + residual add: (oneDNN, PyTorch)."""
    out = block.out
    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(2, rows, out.weight.shape[1], generator=g)

    def fused() -> None:
        _linear_add(x, h, out)

    def plain() -> None:
        h + F.linear(x, out.weight, out.bias)

    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        fused()  # oneDNN builds its kernel on first use
        plain()
        start, pairs = time.perf_counter(), 0
        while pairs < MEASURE_PAIRS[0] or (pairs < MEASURE_PAIRS[1] and
                                           time.perf_counter() - start < MEASURE_BUDGET_S):
            for i, call in enumerate((fused, plain)):
                t = time.perf_counter()
                call()
                best[i] = min(best[i], time.perf_counter() - t)
            pairs += 1
    return best[0], best[1]


def decide(capability: str, seconds: tuple[float, float] | None = None,
           what: str = "the layer") -> Choice:
    """The rule. No AVX-512: PyTorch's forward, unmeasured (oneDNN's edge is its AVX-512
    kernels where MKL runs AVX2 code; on an AVX2-only EPYC the oneDNN towers ran 0.85x).
    AVX-512: oneDNN only if ``seconds`` = (oneDNN, PyTorch) shows it MARGIN faster."""
    if not capability.upper().startswith("AVX512"):
        return Choice("pytorch", f"CPU capability {capability}: no AVX-512, so oneDNN has no "
                                 "faster kernels than PyTorch's matmul")
    if seconds is None:
        return Choice("pytorch", f"CPU capability {capability}, but not measured")
    t_onednn, t_torch = seconds
    detail = (f"CPU capability {capability}; {what}: oneDNN {t_onednn * 1e3:.2f} ms, "
              f"PyTorch {t_torch * 1e3:.2f} ms ({t_torch / t_onednn:.2f}x)")
    if t_onednn * MARGIN <= t_torch:
        return Choice("onednn", f"{detail}, at least the {MARGIN:.2f}x required")
    return Choice("pytorch", f"{detail}, under the {MARGIN:.2f}x oneDNN must reach")


def auto_choice(model: Any) -> Choice:
    """The scorer's default on CPU: which forward runs this model's fp32 towers fastest here.
    Decided once per process, thread count and layer shape (cached), and logged once."""
    if not available():
        return Choice("pytorch", "this PyTorch build has no oneDNN fused linear ops")
    if not torch.backends.mkldnn.enabled:
        return Choice("pytorch", "oneDNN is switched off (torch.backends.mkldnn.enabled)")
    block = _sample_block(model)
    if block is None:
        return Choice("pytorch", "the oneDNN path does not apply to this model's towers")
    w = block.out.weight
    if w.device.type != "cpu" or w.dtype != torch.float32:
        return Choice("pytorch", "the oneDNN path runs only fp32 weights on CPU")
    key = (torch.get_num_threads(), tuple(w.shape))
    choice = _choices.get(key)
    if choice is None:
        choice = _choices[key] = _decide_now(block, key[0])
        log.info("SciScore on CPU: %s, because %s", LABELS[choice.path], choice.reason)
    return choice


def _decide_now(block: _Block, threads: int) -> Choice:
    capability = cpu_capability()
    if not capability.upper().startswith("AVX512"):
        return decide(capability)  # no measurement needed
    try:
        seconds = measure(block)
    except RuntimeError as exc:  # a oneDNN build or CPU that refuses the kernel
        return Choice("pytorch", f"oneDNN failed in the measurement ({exc})")
    d_out, d_in = block.out.weight.shape
    return decide(capability, seconds, f"one {MEASURE_ROWS}x{d_in}x{d_out} layer at {threads} "
                                       f"thread{'s' if threads > 1 else ''}")
