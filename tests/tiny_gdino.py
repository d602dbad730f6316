"""Tiny random GroundingDINO models in the real on-disk formats, for tests and benchmarks.

``build_tiny_gdino(dir)`` saves a transformers GroundingDinoForObjectDetection with random
weights in the Hugging Face layout of IDEA-Research/grounding-dino-tiny: config.json,
model.safetensors, the BERT tokenizer files and the processor config. The tokenizer is a
BertTokenizer over a small word list (passed as ``vocab={...}``: with the keyword
``vocab_file=`` transformers 5 silently maps every token to [UNK]).
"""
from __future__ import annotations

from pathlib import Path

import torch

# Words the tests use as subjects, plus BERT's special tokens and punctuation.
WORDS = ["apple", "glass", "ink", "stain", "flower", "cat", "dog", "ice", "cube", "water",
         "a", "the", "of", "and", "red", "green", "wet", "leaf", "screen", "phone", "candle",
         "metal", "rod", "fruit", "cup", "on", "in", "table", "tree", "bread", "slice"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCT = [".", ",", "-", "'", "(", ")"]


def tiny_vocab() -> dict[str, int]:
    tokens = SPECIAL + PUNCT + WORDS + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + \
        list("abcdefghijklmnopqrstuvwxyz")
    seen: dict[str, int] = {}
    for t in tokens:
        seen.setdefault(t, len(seen))
    return seen


def tiny_bert_tokenizer():
    from transformers import BertTokenizer
    return BertTokenizer(vocab=tiny_vocab(), do_lower_case=True)


def tiny_swin_kwargs(image_size: int = 128) -> dict:
    return dict(image_size=image_size, patch_size=4, num_channels=3, embed_dim=16,
                depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, mlp_ratio=2.0,
                out_indices=[2, 3, 4])


def tiny_bert_kwargs(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                type_vocab_size=2)


def tiny_gdino_config(image_size: int = 128, *, num_queries: int = 20, max_text_len: int = 32,
                      decoder_layers: int = 2, encoder_layers: int = 1):
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig
    return GroundingDinoConfig(
        backbone_config=SwinConfig(**tiny_swin_kwargs(image_size)).to_dict(),
        text_config=BertConfig(**tiny_bert_kwargs(len(tiny_vocab()))).to_dict(),
        num_queries=num_queries, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4,
        decoder_attention_heads=4, d_model=32, max_text_len=max_text_len,
        num_feature_levels=4, encoder_n_points=2, decoder_n_points=2,
        dropout=0.0, fusion_droppath=0.0)


def tiny_gdino_model(seed: int = 0, **config_kwargs):
    """A random GroundingDinoForObjectDetection in eval mode. Box and class heads get larger
    random weights than the default init so that some queries pass the thresholds."""
    from transformers import GroundingDinoForObjectDetection
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(tiny_gdino_config(**config_kwargs)).eval()
    return model


def build_tiny_gdino(directory: str | Path, *, image_size: int = 128, seed: int = 0,
                     **config_kwargs) -> Path:
    """Save a tiny random GroundingDINO in the Hugging Face release layout; returns the dir."""
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_gdino_model(seed, image_size=image_size, **config_kwargs)
    model.save_pretrained(directory)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(
            size={"shortest_edge": image_size, "longest_edge": image_size * 2}),
        tokenizer=tiny_bert_tokenizer())
    processor.save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------- original format
# Writing a transformers GroundingDino back in the layout of IDEA-Research/GroundingDINO's
# groundingdino_swint_ogc.pth (names from the original modules: backbone.0 = Swin, bert =
# BertModelWarper, feat_map, input_proj, transformer.{encoder,decoder,...}, bbox_embed), so
# the converter can be checked on a model whose outputs are known.

_BB = "model.backbone.conv_encoder.model."
_INVERSE = [  # (pattern on the transformers checkpoint name, original name)
    (_BB + r"embeddings\.patch_embeddings\.projection\.(\w+)", r"backbone.0.patch_embed.proj.\1"),
    (_BB + r"embeddings\.norm\.(\w+)", r"backbone.0.patch_embed.norm.\1"),
    (_BB + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.(\w+)",
     r"backbone.0.layers.\1.blocks.\2.norm1.\3"),
    (_BB + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.(\w+)",
     r"backbone.0.layers.\1.blocks.\2.norm2.\3"),
    (_BB + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_bias_table",
     r"backbone.0.layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (_BB + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.(\w+)",
     r"backbone.0.layers.\1.blocks.\2.attn.proj.\3"),
    (_BB + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.(\w+)",
     r"backbone.0.layers.\1.blocks.\2.mlp.fc1.\3"),
    (_BB + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.(\w+)",
     r"backbone.0.layers.\1.blocks.\2.mlp.fc2.\3"),
    (_BB + r"encoder\.layers\.(\d+)\.downsample\.(.+)", r"backbone.0.layers.\1.downsample.\2"),
    (r"model\.text_backbone\.(.+)", r"bert.\1"),
    (r"model\.text_projection\.(\w+)", r"feat_map.\1"),
    (r"model\.input_proj_vision\.(.+)", r"input_proj.\1"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.self_attn\.(\w+)\.(\w+)",
     r"transformer.encoder.layers.\1.self_attn.\2.\3"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.self_attn_layer_norm\.(\w+)",
     r"transformer.encoder.layers.\1.norm1.\2"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.fc(\d)\.(\w+)",
     r"transformer.encoder.layers.\1.linear\2.\3"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.final_layer_norm\.(\w+)",
     r"transformer.encoder.layers.\1.norm2.\2"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.self_attn\.out_proj\.(\w+)",
     r"transformer.encoder.text_layers.\1.self_attn.out_proj.\2"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.fc(\d)\.(\w+)",
     r"transformer.encoder.text_layers.\1.linear\2.\3"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.layer_norm_before\.(\w+)",
     r"transformer.encoder.text_layers.\1.norm1.\2"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.layer_norm_after\.(\w+)",
     r"transformer.encoder.text_layers.\1.norm2.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.vision_param",
     r"transformer.encoder.fusion_layers.\1.gamma_v"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.text_param",
     r"transformer.encoder.fusion_layers.\1.gamma_l"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.layer_norm_vision\.(\w+)",
     r"transformer.encoder.fusion_layers.\1.layer_norm_v.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.layer_norm_text\.(\w+)",
     r"transformer.encoder.fusion_layers.\1.layer_norm_l.\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.(\w+)\.(\w+)",
     r"transformer.decoder.layers.\1.cross_attn.\2.\3"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(\w+)",
     r"transformer.decoder.layers.\1.norm1.\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_text\.out_proj\.(\w+)",
     r"transformer.decoder.layers.\1.ca_text.out_proj.\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_text_layer_norm\.(\w+)",
     r"transformer.decoder.layers.\1.catext_norm.\2"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(\w+)",
     r"transformer.decoder.layers.\1.self_attn.out_proj.\2"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(\w+)",
     r"transformer.decoder.layers.\1.norm2.\2"),
    (r"model\.decoder\.layers\.(\d+)\.fc(\d)\.(\w+)", r"transformer.decoder.layers.\1.linear\2.\3"),
    (r"model\.decoder\.layers\.(\d+)\.final_layer_norm\.(\w+)",
     r"transformer.decoder.layers.\1.norm3.\2"),
    (r"model\.decoder\.layer_norm\.(\w+)", r"transformer.decoder.norm.\1"),
    (r"model\.decoder\.reference_points_head\.(.+)", r"transformer.decoder.ref_point_head.\1"),
    (r"model\.level_embed", r"transformer.level_embed"),
    (r"model\.query_position_embeddings\.weight", r"transformer.tgt_embed.weight"),
    (r"model\.enc_output\.(\w+)", r"transformer.enc_output.\1"),
    (r"model\.enc_output_norm\.(\w+)", r"transformer.enc_output_norm.\1"),
    (r"model\.encoder_output_bbox_embed\.(.+)", r"transformer.enc_out_bbox_embed.\1"),
    (r"bbox_embed\.(.+)", r"bbox_embed.\1"),
]
# Fused projections: (transformers prefix pattern, original fused name pattern).
_FUSED = [
    (_BB + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.",
     r"backbone.0.layers.\1.blocks.\2.attn.qkv.{p}"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.self_attn\.",
     r"transformer.encoder.text_layers.\1.self_attn.in_proj_{p}"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_text\.",
     r"transformer.decoder.layers.\1.ca_text.in_proj_{p}"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn\.",
     r"transformer.decoder.layers.\1.self_attn.in_proj_{p}"),
]
_FUSION_INV = {"vision_proj": "v_proj", "text_proj": "l_proj",
               "values_vision_proj": "values_v_proj", "values_text_proj": "values_l_proj",
               "out_vision_proj": "out_v_proj", "out_text_proj": "out_l_proj"}


def to_original_state_dict(hf_state: dict[str, torch.Tensor], decoder_layers: int
                           ) -> dict[str, torch.Tensor]:
    """A transformers GroundingDino checkpoint (the names save_pretrained writes) rewritten
    in the original release's names, with the extra entries a real .pth carries."""
    import re
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in hf_state.items():
        if re.fullmatch(r".*conv_encoder\.model\.(swin\.)?layernorm\.\w+", key):
            continue  # the Swin model's final norm has no original counterpart (unused)
        m = re.fullmatch(r"model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.(\w+)\.(\w+)", key)
        if m:
            out[f"transformer.encoder.fusion_layers.{m[1]}.attn.{_FUSION_INV[m[2]]}.{m[3]}"] = t
            continue
        m = re.fullmatch(_BB + r"hidden_states_norms\.stage(\d)\.(\w+)", key)
        if m:
            out[f"backbone.0.norm{int(m[1]) - 1}.{m[2]}"] = t
            continue
        done = False
        for prefix, fused_name in _FUSED:
            m = re.fullmatch(prefix + r"(query|key|value)\.(weight|bias)", key)
            if m:
                name = m.expand(fused_name.replace("{p}", m[m.lastindex]))
                fused.setdefault(name, {})[m[m.lastindex - 1]] = t
                done = True
                break
        if done:
            continue
        for pattern, repl in _INVERSE:
            m = re.fullmatch(pattern, key)
            if m:
                out[m.expand(repl)] = t
                break
        else:
            raise KeyError(f"no original name for {key}")
    for name, parts in fused.items():
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    # What the real file carries besides: the decoder's alias of the shared box head,
    # Swin's relative position indices, BERT's pooler and position ids.
    # The shared box head is one module listed once per decoder layer: state_dict holds it
    # under every index, and again under the decoder's alias.
    for key in [k for k in out if k.startswith("bbox_embed.0.")]:
        for i in range(decoder_layers):
            name = key.replace("bbox_embed.0.", f"bbox_embed.{i}.", 1)
            out[name] = out[key]
            out["transformer.decoder." + name] = out[key]
    for key in [k for k in out if k.endswith("attn.relative_position_bias_table")]:
        out[key.replace("relative_position_bias_table", "relative_position_index")] = \
            torch.zeros(4, 4, dtype=torch.long)
    hidden = out["bert.embeddings.word_embeddings.weight"].shape[1]
    out["bert.pooler.dense.weight"] = torch.zeros(hidden, hidden)
    out["bert.pooler.dense.bias"] = torch.zeros(hidden)
    n_pos = out["bert.embeddings.position_embeddings.weight"].shape[0]
    out["bert.embeddings.position_ids"] = torch.arange(n_pos)[None]
    return out


def original_cfg_text(image_size: int = 128, *, num_queries: int = 20, max_text_len: int = 32,
                      decoder_layers: int = 2, encoder_layers: int = 1) -> str:
    """A .cfg.py in the released format describing tiny_gdino_config's shapes (the Swin
    shape through the swin_* keys the loader accepts for non-released variants)."""
    swin = tiny_swin_kwargs(image_size)
    return f'''batch_size = 1
modelname = "groundingdino"
backbone = "swin_T_224_1k"
swin_embed_dim = {swin["embed_dim"]}
swin_depths = {swin["depths"]}
swin_num_heads = {swin["num_heads"]}
swin_window_size = {swin["window_size"]}
swin_mlp_ratio = {swin["mlp_ratio"]}
swin_image_size = {image_size}
position_embedding = "sine"
pe_temperatureH = 20
pe_temperatureW = 20
return_interm_indices = [1, 2, 3]
backbone_freeze_keywords = None
enc_layers = {encoder_layers}
dec_layers = {decoder_layers}
pre_norm = False
dim_feedforward = 64
hidden_dim = 32
dropout = 0.0
nheads = 4
num_queries = {num_queries}
query_dim = 4
num_patterns = 0
num_feature_levels = 4
enc_n_points = 2
dec_n_points = 2
two_stage_type = "standard"
two_stage_bbox_embed_share = False
two_stage_class_embed_share = False
transformer_activation = "relu"
dec_pred_bbox_embed_share = True
dn_box_noise_scale = 1.0
dn_label_noise_ratio = 0.5
dn_label_coef = 1.0
dn_bbox_coef = 1.0
embed_init_tgt = True
dn_labelbook_size = 2000
max_text_len = {max_text_len}
text_encoder_type = "bert-base-uncased"
use_text_enhancer = True
use_fusion_layer = True
use_checkpoint = True
use_transformer_ckpt = True
use_text_cross_attention = True
text_dropout = 0.0
fusion_dropout = 0.0
fusion_droppath = 0.0
sub_sentence_present = True
'''


def build_tiny_original(directory: str | Path, *, image_size: int = 128, seed: int = 0,
                        with_bert: bool = True):
    """groundingdino_swint_ogc.pth + GroundingDINO_SwinT_OGC.cfg.py (+ bert-base-uncased/
    config.json and vocab.txt beside them) for a tiny random model; returns
    (checkpoint path, the transformers model it was derived from)."""
    import tempfile
    from safetensors.torch import load_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = tiny_gdino_model(seed, image_size=image_size)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        hf_state = load_file(str(Path(tmp) / "model.safetensors"))
    original = to_original_state_dict(hf_state, model.config.decoder_layers)
    ckpt = directory / "groundingdino_swint_ogc.pth"
    torch.save({"model": original, "optimizer": None, "epoch": 11}, ckpt)
    (directory / "GroundingDINO_SwinT_OGC.cfg.py").write_text(original_cfg_text(image_size))
    if with_bert:
        write_tiny_bert_files(directory / "bert-base-uncased", model.config.text_config)
    return ckpt, model


def write_tiny_bert_files(folder: Path, text_config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text_config.save_pretrained(folder)
    vocab = tiny_vocab()
    (folder / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    return folder
