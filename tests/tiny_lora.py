"""A tiny diffusers FluxTransformer2DModel with a peft LoRA, and the same LoRA written in the
key formats real FLUX LoRA files use (for the LoRA tests)."""
from __future__ import annotations

import torch

HIDDEN = 16  # num_attention_heads * attention_head_dim
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                 pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
ALL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
               "to_add_out", "proj_mlp", "proj_out", "norm1.linear", "norm1_context.linear",
               "norm.linear", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
               "ff_context.net.2", "x_embedder", "context_embedder", "norm_out.linear", "linear_1",
               "linear_2"]


def tiny_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    return FluxTransformer2DModel(**TINY_FLUX).eval()


def tiny_lora_transformer(rank: int = 4, alpha: float = 8.0, seed: int = 0, targets=None,
                          **config):
    """The tiny transformer with a randomly initialised (non-zero) peft LoRA."""
    return add_random_lora(tiny_transformer(seed), rank, alpha, seed + 1, targets, **config)


def tiny_inputs(config=None, seed: int = 3) -> dict:
    """Fixed inputs for a FluxTransformer2DModel with ``config`` (default: TINY_FLUX)."""
    c = dict(TINY_FLUX if config is None else config)
    g = torch.Generator().manual_seed(seed)
    h = w = 2
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3)
    inputs = dict(hidden_states=torch.randn(1, h * w, c["in_channels"], generator=g),
                  encoder_hidden_states=torch.randn(1, 3, c["joint_attention_dim"], generator=g),
                  pooled_projections=torch.randn(1, c["pooled_projection_dim"], generator=g),
                  timestep=torch.tensor([0.5]), img_ids=img_ids, txt_ids=torch.zeros(3, 3),
                  return_dict=False)
    if c.get("guidance_embeds"):
        inputs["guidance"] = torch.tensor([3.5])
    return inputs


def forward(t) -> torch.Tensor:
    with torch.no_grad():
        return t(**tiny_inputs(dict(t.config)))[0]


def add_random_lora(t, rank: int = 4, alpha: float = 8.0, seed: int = 1, targets=None, **config):
    """Attach a peft LoRA with clearly non-zero B to a FluxTransformer2DModel."""
    from peft import LoraConfig
    torch.manual_seed(seed)
    t.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets or ALL_TARGETS,
                             init_lora_weights=False, **config))
    # peft's random init leaves B small; make every layer's change clearly visible
    with torch.no_grad():
        for name, p in t.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return t.eval()


def peft_lora(t, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (A, B) of the adapter, read straight from the peft layers."""
    from peft.tuners.lora import LoraLayer
    out = {}
    for name, m in t.named_modules():
        if isinstance(m, LoraLayer) and adapter in m.lora_A:
            out[name] = (m.lora_A[adapter].weight.detach().clone(),
                         m.lora_B[adapter].weight.detach().clone())
    return out
