"""The original GroundingDINO release (``groundingdino_swint_ogc.pth`` + ``GroundingDINO_SwinT_OGC.cfg.py``,
the files ComfyUI users keep in models/grounding-dino/) loaded into transformers'
GroundingDinoForObjectDetection, with no dependency on the groundingdino package.

- The ``.cfg.py`` is Python source; it is parsed with ``ast`` and only literal assignments are
  read (nothing is executed).
- The state dict is renamed key by key to the names transformers' checkpoints use (the naming of
  transformers' own conversion script for IDEA-Research/grounding-dino-tiny), with the fused
  ``qkv`` / ``in_proj`` attention matrices split into query, key and value. Every key of the
  original file must be either converted or on a short list of known derived buffers and unused
  weights; every weight of the target model must be filled. Anything else is an error, so a
  silently half-loaded detector cannot happen.
- BERT's config and tokenizer files (not its weights: those are in the ``.pth``) are looked up
  locally, never downloaded.
"""
from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

import torch

from .. import _comfy
from ..core.files import load_safetensors, load_torch_checkpoint
from ..errors import ScienceT2IError

log = logging.getLogger("science_t2i")

# Swin variants named by the original configs' ``backbone`` field (from the original
# backbone builder): embed_dim, depths, num_heads, window_size, pretraining image size.
SWIN_VARIANTS: dict[str, dict[str, Any]] = {
    "swin_T_224_1k": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                          window_size=7, image_size=224),
    "swin_B_224_22k": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
                           window_size=7, image_size=224),
    "swin_B_384_22k": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
                           window_size=12, image_size=384),
    "swin_L_224_22k": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
                           window_size=7, image_size=224),
    "swin_L_384_22k": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
                           window_size=12, image_size=384),
}
# Optional cfg keys (not in the released configs) describing another Swin shape.
SWIN_OVERRIDE_KEYS = {"swin_embed_dim": "embed_dim", "swin_depths": "depths",
                      "swin_num_heads": "num_heads", "swin_window_size": "window_size",
                      "swin_mlp_ratio": "mlp_ratio", "swin_image_size": "image_size"}

BERT_HINT = ("hf download google-bert/bert-base-uncased config.json vocab.txt "
             "tokenizer_config.json --local-dir {folder}")


# ----------------------------------------------------------------------------- .cfg.py

def parse_original_config(path: str | Path) -> dict[str, Any]:
    """Read ``name = literal`` assignments from an original GroundingDINO ``.cfg.py``.

    The file is never executed: anything other than literal assignments (and docstrings) is
    refused with the offending line, so a config cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise ScienceT2IError(f"GroundingDINO config not found: {path}")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise ScienceT2IError(f"{path} is not a readable GroundingDINO .cfg.py ({exc}).") from exc
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring / comment string
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError as exc:
                raise ScienceT2IError(
                    f"{path}, line {node.lineno}: `{node.targets[0].id}` is not a literal value; "
                    "only plain `name = value` lines (numbers, strings, lists, dicts, None, "
                    "True/False) are read from GroundingDINO configs.") from exc
            continue
        raise ScienceT2IError(
            f"{path}, line {getattr(node, 'lineno', '?')}: unexpected statement "
            f"({type(node).__name__}); GroundingDINO configs hold only `name = value` lines "
            "and are never executed. Use the config file from the GroundingDINO release.")
    if values.get("modelname", "groundingdino") != "groundingdino":
        raise ScienceT2IError(f"{path}: modelname is {values.get('modelname')!r}; only "
                              "'groundingdino' configs are supported.")
    return values


def _require(cfg: dict, key: str, expected: Any, what: str) -> None:
    if key in cfg and cfg[key] != expected:
        raise ScienceT2IError(f"GroundingDINO config: {key} = {cfg[key]!r} is not supported "
                              f"({what}); the released Swin-T/Swin-B configs use {expected!r}.")


def config_from_original(cfg: dict[str, Any], bert_dir: str | Path):
    """A transformers GroundingDinoConfig equivalent to an original ``.cfg.py`` dict."""
    from transformers import GroundingDinoConfig, SwinConfig
    for key, expected, what in [
            ("two_stage_type", "standard", "two-stage query selection"),
            ("use_text_enhancer", True, "text enhancer layers"),
            ("use_fusion_layer", True, "image-text fusion layers"),
            ("use_text_cross_attention", True, "decoder text cross-attention"),
            ("sub_sentence_present", True, "sub-sentence text masks"),
            ("query_dim", 4, "4-d anchor queries"),
            ("pre_norm", False, "post-norm layers"),
            ("num_patterns", 0, "no query patterns")]:
        _require(cfg, key, expected, what)
    temp_h, temp_w = cfg.get("pe_temperatureH", 20), cfg.get("pe_temperatureW", 20)
    if temp_h != temp_w:
        raise ScienceT2IError(f"GroundingDINO config: pe_temperatureH ({temp_h}) differs from "
                              f"pe_temperatureW ({temp_w}); transformers uses one temperature.")
    backbone = cfg.get("backbone", "swin_T_224_1k")
    if backbone not in SWIN_VARIANTS:
        raise ScienceT2IError(f"GroundingDINO config: backbone {backbone!r} is not supported; "
                              f"known: {', '.join(SWIN_VARIANTS)}.")
    swin = dict(SWIN_VARIANTS[backbone])
    for key, target in SWIN_OVERRIDE_KEYS.items():
        if key in cfg:
            swin[target] = cfg[key]
    interm = list(cfg.get("return_interm_indices", [1, 2, 3]))
    # The original counts Swin stages from 0; transformers' backbone counts the stem as 0.
    swin_cfg = SwinConfig(**swin, out_indices=[i + 1 for i in interm])
    text_cfg = _bert_config(bert_dir)
    ffn = int(cfg.get("dim_feedforward", 2048))
    heads = int(cfg.get("nheads", 8))
    return GroundingDinoConfig(
        backbone_config=swin_cfg.to_dict(), text_config=text_cfg.to_dict(),
        d_model=int(cfg.get("hidden_dim", 256)),
        encoder_layers=int(cfg.get("enc_layers", 6)), decoder_layers=int(cfg.get("dec_layers", 6)),
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        num_queries=int(cfg.get("num_queries", 900)),
        num_feature_levels=int(cfg.get("num_feature_levels", 4)),
        encoder_n_points=int(cfg.get("enc_n_points", 4)),
        decoder_n_points=int(cfg.get("dec_n_points", 4)),
        activation_function=cfg.get("transformer_activation", "relu"),
        position_embedding_type=cfg.get("position_embedding", "sine"),
        positional_embedding_temperature=temp_h,
        max_text_len=int(cfg.get("max_text_len", 256)),
        embedding_init_target=bool(cfg.get("embed_init_tgt", True)),
        decoder_bbox_embed_share=bool(cfg.get("dec_pred_bbox_embed_share", True)),
        two_stage_bbox_embed_share=bool(cfg.get("two_stage_bbox_embed_share", False)),
        two_stage=True, query_dim=4,
        dropout=float(cfg.get("dropout", 0.0)),
        text_enhancer_dropout=float(cfg.get("text_dropout", 0.0)),
        fusion_dropout=float(cfg.get("fusion_dropout", 0.0)),
        fusion_droppath=float(cfg.get("fusion_droppath", 0.1)),
    )


def _bert_config(bert_dir: str | Path):
    from transformers import BertConfig
    try:
        return BertConfig.from_pretrained(str(bert_dir), local_files_only=True)
    except Exception as exc:
        raise ScienceT2IError(f"cannot read BERT's config.json in {bert_dir} ({exc}).") from exc


# ----------------------------------------------------------------------------- finding files

def _norm_name(name: str) -> str:
    name = name.lower()
    for suffix in (".cfg.py", ".py", ".pth", ".safetensors"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    name = re.sub(r"[^a-z0-9]", "", name)
    return name.replace("groundingdino", "")


def find_config_for(checkpoint: Path) -> Path:
    """The ``.cfg.py`` for a checkpoint: the same name, else the one whose name matches
    (``groundingdino_swint_ogc.pth`` <-> ``GroundingDINO_SwinT_OGC.cfg.py``,
    ``groundingdino_swinb_cogcoor.pth`` <-> ``GroundingDINO_SwinB.cfg.py``), else the only one."""
    folder = checkpoint.parent
    same = folder / (checkpoint.stem + ".cfg.py")
    if same.is_file():
        return same
    cfgs = sorted(p for p in folder.glob("*.py") if p.is_file())
    target = _norm_name(checkpoint.name)
    exact = [p for p in cfgs if _norm_name(p.name) == target]
    if len(exact) == 1:
        return exact[0]
    prefix = [p for p in cfgs if _norm_name(p.name) and target.startswith(_norm_name(p.name))]
    if len(prefix) == 1:
        return prefix[0]
    cfg_files = [p for p in cfgs if p.name.endswith(".cfg.py")]
    if len(cfg_files) == 1:
        return cfg_files[0]
    raise ScienceT2IError(
        f"no GroundingDINO config (.cfg.py) found beside {checkpoint}. Put the config that came "
        f"with the checkpoint next to it (for groundingdino_swint_ogc.pth: "
        f"GroundingDINO_SwinT_OGC.cfg.py, from https://huggingface.co/ShilongLiu/GroundingDINO), "
        f"named {checkpoint.stem}.cfg.py or GroundingDINO_<variant>.cfg.py.")


def find_bert_dir(checkpoint: Path, text_encoder_type: str = "bert-base-uncased") -> Path:
    """BERT's config + tokenizer files: beside the checkpoint, or in models/bert-base-uncased."""
    name = text_encoder_type.rstrip("/").split("/")[-1] or "bert-base-uncased"
    candidates = [checkpoint.parent / name, checkpoint.parent / "bert-base-uncased"]
    candidates += list(_comfy.folder_paths_for("bert-base-uncased"))
    for cand in candidates:
        if (cand / "config.json").is_file() and \
                ((cand / "vocab.txt").is_file() or (cand / "tokenizer.json").is_file()):
            return cand
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    folder = _comfy.default_folder("bert-base-uncased")
    raise ScienceT2IError(
        f"BERT files for the GroundingDINO checkpoint {checkpoint.name} not found (looked in "
        f"{looked}). GroundingDINO's text encoder needs bert-base-uncased's config.json and "
        f"vocab.txt; nothing is downloaded automatically. Get them with: "
        + BERT_HINT.format(folder=folder))


def load_bert_tokenizer(bert_dir: Path):
    from transformers import BertTokenizer
    vocab = bert_dir / "vocab.txt"
    try:
        if vocab.is_file():
            return BertTokenizer(str(vocab), do_lower_case=True)
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
    except Exception as exc:
        raise ScienceT2IError(f"cannot read the BERT tokenizer in {bert_dir} ({exc}).") from exc


# ----------------------------------------------------------------------------- key conversion

_BB = "model.backbone.conv_encoder.model."
# (pattern on the original key, replacement) applied with re.fullmatch; first match wins.
_RULES: list[tuple[str, str]] = [
    # Swin backbone (backbone.0 = Swin, backbone.1 = the parameter-free position embedding)
    (r"backbone\.0\.patch_embed\.proj\.(weight|bias)",
     _BB + r"embeddings.patch_embeddings.projection.\1"),
    (r"backbone\.0\.patch_embed\.norm\.(weight|bias)", _BB + r"embeddings.norm.\1"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.(weight|bias)",
     _BB + r"encoder.layers.\1.blocks.\2.layernorm_before.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.norm2\.(weight|bias)",
     _BB + r"encoder.layers.\1.blocks.\2.layernorm_after.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
     _BB + r"encoder.layers.\1.blocks.\2.attention.self.relative_position_bias_table"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)",
     _BB + r"encoder.layers.\1.blocks.\2.attention.self.{q}.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
     _BB + r"encoder.layers.\1.blocks.\2.attention.output.dense.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)",
     _BB + r"encoder.layers.\1.blocks.\2.intermediate.dense.\3"),
    (r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)",
     _BB + r"encoder.layers.\1.blocks.\2.output.dense.\3"),
    (r"backbone\.0\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
     _BB + r"encoder.layers.\1.downsample.\2"),
    (r"backbone\.0\.norm(\d+)\.(weight|bias)", _BB + r"hidden_states_norms.stage{n+1}.\2"),
    # text backbone, projections
    (r"bert\.(embeddings|encoder)\.(.+)", r"model.text_backbone.\1.\2"),
    (r"feat_map\.(weight|bias)", r"model.text_projection.\1"),
    (r"input_proj\.(\d+)\.(\d+)\.(weight|bias)", r"model.input_proj_vision.\1.\2.\3"),
    # encoder: deformable image layers, text enhancer layers, fusion layers
    (r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|"
     r"value_proj|output_proj)\.(weight|bias)",
     r"model.encoder.layers.\1.deformable_layer.self_attn.\2.\3"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)",
     r"model.encoder.layers.\1.deformable_layer.self_attn_layer_norm.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.linear([12])\.(weight|bias)",
     r"model.encoder.layers.\1.deformable_layer.fc\2.\3"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)",
     r"model.encoder.layers.\1.deformable_layer.final_layer_norm.\2"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)",
     r"model.encoder.layers.\1.text_enhancer_layer.self_attn.{q}.\2"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
     r"model.encoder.layers.\1.text_enhancer_layer.self_attn.out_proj.\2"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.linear([12])\.(weight|bias)",
     r"model.encoder.layers.\1.text_enhancer_layer.fc\2.\3"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.norm1\.(weight|bias)",
     r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_before.\2"),
    (r"transformer\.encoder\.text_layers\.(\d+)\.norm2\.(weight|bias)",
     r"model.encoder.layers.\1.text_enhancer_layer.layer_norm_after.\2"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.gamma_v",
     r"model.encoder.layers.\1.fusion_layer.vision_param"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.gamma_l",
     r"model.encoder.layers.\1.fusion_layer.text_param"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.layer_norm_v\.(weight|bias)",
     r"model.encoder.layers.\1.fusion_layer.layer_norm_vision.\2"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.layer_norm_l\.(weight|bias)",
     r"model.encoder.layers.\1.fusion_layer.layer_norm_text.\2"),
    (r"transformer\.encoder\.fusion_layers\.(\d+)\.attn\.(v|l|values_v|values_l|out_v|out_l)"
     r"_proj\.(weight|bias)", r"model.encoder.layers.\1.fusion_layer.attn.{fusion}_proj.\3"),
    # decoder
    (r"transformer\.decoder\.layers\.(\d+)\.cross_attn\.(sampling_offsets|attention_weights|"
     r"value_proj|output_proj)\.(weight|bias)", r"model.decoder.layers.\1.encoder_attn.\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm1\.(weight|bias)",
     r"model.decoder.layers.\1.encoder_attn_layer_norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.ca_text\.in_proj_(weight|bias)",
     r"model.decoder.layers.\1.encoder_attn_text.{q}.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.ca_text\.out_proj\.(weight|bias)",
     r"model.decoder.layers.\1.encoder_attn_text.out_proj.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.catext_norm\.(weight|bias)",
     r"model.decoder.layers.\1.encoder_attn_text_layer_norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)",
     r"model.decoder.layers.\1.self_attn.{q}.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
     r"model.decoder.layers.\1.self_attn.out_proj.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm2\.(weight|bias)",
     r"model.decoder.layers.\1.self_attn_layer_norm.\2"),
    (r"transformer\.decoder\.layers\.(\d+)\.linear([12])\.(weight|bias)",
     r"model.decoder.layers.\1.fc\2.\3"),
    (r"transformer\.decoder\.layers\.(\d+)\.norm3\.(weight|bias)",
     r"model.decoder.layers.\1.final_layer_norm.\2"),
    (r"transformer\.decoder\.norm\.(weight|bias)", r"model.decoder.layer_norm.\1"),
    (r"transformer\.decoder\.ref_point_head\.layers\.(\d+)\.(weight|bias)",
     r"model.decoder.reference_points_head.layers.\1.\2"),
    # two-stage query selection and heads
    (r"transformer\.level_embed", r"model.level_embed"),
    (r"transformer\.tgt_embed\.weight", r"model.query_position_embeddings.weight"),
    (r"transformer\.enc_output\.(weight|bias)", r"model.enc_output.\1"),
    (r"transformer\.enc_output_norm\.(weight|bias)", r"model.enc_output_norm.\1"),
    (r"transformer\.enc_out_bbox_embed\.layers\.(\d+)\.(weight|bias)",
     r"model.encoder_output_bbox_embed.layers.\1.\2"),
    (r"bbox_embed\.(\d+)\.layers\.(\d+)\.(weight|bias)", r"bbox_embed.\1.layers.\2.\3"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]
_FUSION = {"v": "vision", "l": "text", "values_v": "values_vision", "values_l": "values_text",
           "out_v": "out_vision", "out_l": "out_text"}

# Keys of the original file that carry nothing transformers needs: buffers it recomputes
# (relative position indices, BERT position ids), BERT's pooler (unused by GroundingDINO),
# and the decoder's alias of the shared box head (same tensors as top-level bbox_embed.*).
_IGNORED = [re.compile(p) for p in (
    r"backbone\.0\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
    r"backbone\.0\.layers\.\d+\.blocks\.\d+\.attn_mask",
    r"bert\.embeddings\.position_ids", r"bert\.embeddings\.token_type_ids",
    r"bert\.pooler\..*",
    r"transformer\.decoder\.bbox_embed\..*",
)]


def _strip_wrappers(state: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or \
            not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScienceT2IError(f"{source} does not hold a GroundingDINO state dict (a mapping of "
                              "parameter names to tensors, optionally under 'model').")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def convert_original_state_dict(state: dict[str, torch.Tensor],
                                source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename an original GroundingDINO state dict to transformers' checkpoint names.

    Fused attention projections are split in q, k, v order (nn.MultiheadAttention's
    ``in_proj`` and timm Swin's ``qkv`` both stack them that way). Raises on any key that is
    neither converted nor a known derived buffer.
    """
    state = _strip_wrappers(state, source)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if any(p.fullmatch(key) for p in _IGNORED):
            continue
        for pattern, repl in _COMPILED:
            m = pattern.fullmatch(key)
            if m is None:
                continue
            target = m.expand(repl)
            if "{n+1}" in target:  # the original counts Swin stages from 0
                target = target.replace("{n+1}", str(int(m.group(1)) + 1))
            if "{fusion}" in target:
                target = target.replace("{fusion}", _FUSION[m.group(2)])
            if "{q}" in target:
                if tensor.shape[0] % 3:
                    raise ScienceT2IError(f"{source}: {key} has shape {tuple(tensor.shape)}, "
                                          "which is not a fused q/k/v projection.")
                for name, part in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                    out[target.replace("{q}", name)] = part.clone()
            else:
                out[target] = tensor
            break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise ScienceT2IError(
            f"{source}: {len(unknown)} weight(s) are not part of an original GroundingDINO "
            f"(Swin + BERT) checkpoint: {shown}. Is this a GroundingDINO .pth from "
            "IDEA-Research/GroundingDINO?")
    return out


def read_original_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        return load_safetensors(path)
    return _strip_wrappers(load_torch_checkpoint(path), str(path))


def build_from_original(state: dict[str, torch.Tensor], config, source: str = "checkpoint"):
    """A GroundingDinoForObjectDetection with an original state dict converted into it.

    Every weight of the model must come from the checkpoint (except the Swin model's final
    norm, which the backbone never applies) with the right shape; otherwise a
    ScienceT2IError says what did not fit.
    """
    from transformers import GroundingDinoForObjectDetection
    converted = convert_original_state_dict(state, source)
    try:
        model, info = GroundingDinoForObjectDetection.from_pretrained(
            None, config=config, state_dict=converted, output_loading_info=True)
    except Exception as exc:  # shape mismatches raise inside transformers
        raise ScienceT2IError(
            f"{source} does not fit its .cfg.py / BERT config ({str(exc).splitlines()[0]}). "
            + _MISMATCH_HINT) from exc
    missing = sorted(k for k in info.get("missing_keys", ())
                     if not any(p.fullmatch(k) for p in _UNUSED_TARGETS))
    unexpected = sorted(info.get("unexpected_keys", ()))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weight(s) missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} not used (e.g. {', '.join(unexpected[:4])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {mismatched[0]})")
        raise ScienceT2IError(f"{source} does not fit its .cfg.py / BERT config: "
                              + "; ".join(parts) + ". " + _MISMATCH_HINT)
    return model.eval()


_MISMATCH_HINT = ("Check that the .cfg.py is the one released with this checkpoint "
                  "(GroundingDINO_SwinT_OGC.cfg.py for groundingdino_swint_ogc.pth, "
                  "GroundingDINO_SwinB.cfg.py for groundingdino_swinb_cogcoor.pth) and that "
                  "the BERT config is bert-base-uncased's.")
# Model weights with no counterpart in the original, unused by the detection forward: the
# Swin model's final norm (the backbone applies its per-stage norms instead).
_UNUSED_TARGETS = [re.compile(r".*conv_encoder\.model\.(swin\.)?layernorm\.(weight|bias)")]


def load_original_checkpoint(checkpoint: str | Path, config_path: str | Path | None = None,
                             bert_dir: str | Path | None = None):
    """(model, processor) from an original ``.pth`` (or original-format ``.safetensors``)
    with its ``.cfg.py`` and local BERT config/tokenizer files."""
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ScienceT2IError(f"GroundingDINO checkpoint not found: {checkpoint}")
    cfg_path = Path(config_path) if config_path else find_config_for(checkpoint)
    cfg = parse_original_config(cfg_path)
    bert = Path(bert_dir) if bert_dir else find_bert_dir(
        checkpoint, str(cfg.get("text_encoder_type", "bert-base-uncased")))
    config = config_from_original(cfg, bert)
    state = read_original_state_dict(checkpoint)
    model = build_from_original(state, config, source=str(checkpoint))
    tokenizer = load_bert_tokenizer(bert)
    # The original inference resizes the shorter side to 800 (longer <= 1333) and normalises
    # with ImageNet statistics: the image processor's defaults.
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(),
                                       tokenizer=tokenizer)
    return model, processor
