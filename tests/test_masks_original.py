"""The original GroundingDINO release (.pth + .cfg.py + local BERT files) converted into the
transformers model: a tiny model written in the original key layout loads back to identical
outputs; the config is parsed without executing it; missing/corrupt files give clear errors."""
from __future__ import annotations

import pytest
import torch
from science_t2i.nodes import masks
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.masks import gdino_original as go
from science_t2i.nodes.masks import node_classes as mask_nodes
from tiny_gdino import build_tiny_original, tiny_bert_tokenizer, write_tiny_bert_files

# The released GroundingDINO_SwinT_OGC.cfg.py (IDEA-Research/GroundingDINO), verbatim.
SWINT_OGC_CFG = '''batch_size = 1
modelname = "groundingdino"
backbone = "swin_T_224_1k"
position_embedding = "sine"
pe_temperatureH = 20
pe_temperatureW = 20
return_interm_indices = [1, 2, 3]
backbone_freeze_keywords = None
enc_layers = 6
dec_layers = 6
pre_norm = False
dim_feedforward = 2048
hidden_dim = 256
dropout = 0.0
nheads = 8
num_queries = 900
query_dim = 4
num_patterns = 0
num_feature_levels = 4
enc_n_points = 4
dec_n_points = 4
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
max_text_len = 256
text_encoder_type = "bert-base-uncased"
use_text_enhancer = True
use_fusion_layer = True
use_checkpoint = True
use_transformer_ckpt = True
use_text_cross_attention = True
text_dropout = 0.0
fusion_dropout = 0.0
fusion_droppath = 0.1
sub_sentence_present = True
'''


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orig") / "grounding-dino"
    ckpt, source = build_tiny_original(folder)
    return folder, ckpt, source


def _outputs(model, seed=3):
    torch.manual_seed(seed)
    pixels = torch.randn(2, 3, 128, 160)
    ids = tiny_bert_tokenizer()(["ink stain . glass .", "apple ."], padding=True,
                                return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=pixels, **ids)
    return out.logits, out.pred_boxes


def test_original_file_has_the_release_key_names(original):
    _, ckpt, _ = original
    state = torch.load(ckpt, weights_only=True)["model"]
    # names from the original modules (groundingdino.py, transformer.py, swin_transformer.py)
    for key in ["backbone.0.patch_embed.proj.weight", "backbone.0.layers.0.blocks.0.attn.qkv.weight",
                "backbone.0.layers.0.blocks.0.attn.relative_position_index",
                "backbone.0.layers.2.downsample.reduction.weight", "backbone.0.norm1.weight",
                "backbone.0.norm3.bias", "bert.embeddings.word_embeddings.weight",
                "bert.encoder.layer.0.attention.self.query.weight", "bert.pooler.dense.weight",
                "feat_map.weight", "input_proj.3.1.bias", "transformer.level_embed",
                "transformer.tgt_embed.weight", "transformer.enc_output_norm.weight",
                "transformer.enc_out_bbox_embed.layers.2.bias",
                "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
                "transformer.encoder.text_layers.0.self_attn.in_proj_weight",
                "transformer.encoder.fusion_layers.0.gamma_v",
                "transformer.encoder.fusion_layers.0.attn.values_l_proj.weight",
                "transformer.decoder.layers.1.ca_text.in_proj_bias",
                "transformer.decoder.layers.1.catext_norm.weight",
                "transformer.decoder.layers.1.cross_attn.value_proj.weight",
                "transformer.decoder.layers.0.norm3.weight", "transformer.decoder.norm.weight",
                "transformer.decoder.ref_point_head.layers.1.weight",
                "transformer.decoder.bbox_embed.0.layers.0.weight", "bbox_embed.1.layers.2.weight"]:
        assert key in state, key
    assert not any(k.startswith("model.") for k in state)


def test_converted_checkpoint_gives_the_source_outputs(original):
    folder, ckpt, source = original
    model, processor = go.load_original_checkpoint(ckpt)
    logits_a, boxes_a = _outputs(source)
    logits_b, boxes_b = _outputs(model)
    finite = torch.isfinite(logits_a)
    assert torch.equal(finite, torch.isfinite(logits_b)) and finite.any()
    assert (logits_a[finite] - logits_b[finite]).abs().max() < 1e-5
    assert (boxes_a - boxes_b).abs().max() < 1e-6
    # every weight came from the file (a fresh random model differs)
    ref = dict(source.named_parameters())
    for name, p in model.named_parameters():
        if "layernorm" in name and "swin" in name:
            continue  # the Swin final norm, unused by the forward, has no original counterpart
        assert torch.equal(p, ref[name]), name
    assert processor.image_processor.size.shortest_edge == 800  # the release's resize


def test_detect_through_the_original_backend(original, models_dir):
    folder, ckpt, source = original
    import shutil
    shutil.copytree(folder, models_dir / "grounding-dino")
    names = mask_nodes.GroundingDinoLoaderNode.INPUT_TYPES()["required"]["model_name"][0]
    assert "groundingdino_swint_ogc.pth" in names and "bert-base-uncased" not in names
    (m,) = mask_nodes.GroundingDinoLoaderNode().load("groundingdino_swint_ogc.pth", "fp32", 128)
    assert m.backend == "original"
    image = torch.rand(1, 128, 160, 3)
    det = m.detect(image, "apple", 0.3, 0.25)[0]
    # the same detection straight from the source model and transformers' post-processing
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor
    proc = GroundingDinoProcessor(GroundingDinoImageProcessor(
        size={"shortest_edge": 128, "longest_edge": 213}), tiny_bert_tokenizer())
    inputs = proc(images=[image[0].permute(2, 0, 1)], text=["apple ."], do_rescale=False,
                  return_tensors="pt")
    with torch.no_grad():
        out = source(**inputs)
    ref = proc.post_process_grounded_object_detection(out, inputs["input_ids"], threshold=0.3,
                                                      text_threshold=0.25,
                                                      target_sizes=[(128, 160)])[0]
    assert det.boxes.shape[0] == ref["boxes"].shape[0]
    assert torch.allclose(det.scores, ref["scores"], atol=1e-5)


def test_swint_ogc_config_maps_to_grounding_dino_t(tmp_path):
    from transformers import BertConfig
    cfg_file = tmp_path / "GroundingDINO_SwinT_OGC.cfg.py"
    cfg_file.write_text(SWINT_OGC_CFG)
    cfg = go.parse_original_config(cfg_file)
    bert = tmp_path / "bert"
    bert.mkdir()
    BertConfig().save_pretrained(bert)  # bert-base-uncased's shape
    c = go.config_from_original(cfg, bert)
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.num_queries) == (256, 6, 6, 900)
    assert (c.encoder_ffn_dim, c.encoder_attention_heads, c.num_feature_levels) == (2048, 8, 4)
    assert (c.encoder_n_points, c.decoder_n_points, c.max_text_len) == (4, 4, 256)
    assert c.two_stage and c.embedding_init_target and c.decoder_bbox_embed_share
    assert not c.two_stage_bbox_embed_share and c.positional_embedding_temperature == 20
    b = c.backbone_config
    assert (b.embed_dim, list(b.depths), list(b.num_heads), b.window_size) == \
        (96, [2, 2, 6, 2], [3, 6, 12, 24], 7)
    assert list(b.out_indices) == [2, 3, 4]
    assert c.text_config.hidden_size == 768 and c.text_config.num_hidden_layers == 12


def test_config_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.cfg.py"
    bad.write_text(f"import os\nos.system('touch {marker}')\nhidden_dim = 256\n")
    with pytest.raises(ScienceT2IError, match="never executed"):
        go.parse_original_config(bad)
    bad.write_text(f"hidden_dim = __import__('os').system('touch {marker}')\n")
    with pytest.raises(ScienceT2IError, match="not a literal"):
        go.parse_original_config(bad)
    assert not marker.exists()
    bad.write_text("hidden_dim = (\n")
    with pytest.raises(ScienceT2IError, match="not a readable"):
        go.parse_original_config(bad)


def test_unsupported_config_values(tmp_path):
    bert = write_tiny_bert_files(tmp_path / "bert", __import__("transformers").BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16))
    with pytest.raises(ScienceT2IError, match="two_stage_type"):
        go.config_from_original({"two_stage_type": "no"}, bert)
    with pytest.raises(ScienceT2IError, match="backbone 'resnet50'"):
        go.config_from_original({"backbone": "resnet50"}, bert)


def test_config_found_by_release_names(tmp_path):
    (tmp_path / "groundingdino_swinb_cogcoor.pth").write_bytes(b"")
    (tmp_path / "groundingdino_swint_ogc.pth").write_bytes(b"")
    (tmp_path / "GroundingDINO_SwinB.cfg.py").write_text("")
    (tmp_path / "GroundingDINO_SwinT_OGC.cfg.py").write_text("")
    assert go.find_config_for(tmp_path / "groundingdino_swint_ogc.pth").name == \
        "GroundingDINO_SwinT_OGC.cfg.py"
    assert go.find_config_for(tmp_path / "groundingdino_swinb_cogcoor.pth").name == \
        "GroundingDINO_SwinB.cfg.py"


# ----------------------------------------------------------------------------- bad inputs

def test_missing_cfg_beside_pth(tmp_path, original):
    _, ckpt, _ = original
    import shutil
    lone = tmp_path / "groundingdino_swint_ogc.pth"
    shutil.copy(ckpt, lone)
    with pytest.raises(ScienceT2IError, match=r"no GroundingDINO config \(\.cfg\.py\) found"):
        masks.load_grounding_dino(str(lone))


def test_missing_bert_files(tmp_path, original, models_dir):
    folder, ckpt, _ = original
    import shutil
    shutil.copy(ckpt, tmp_path / ckpt.name)
    shutil.copy(folder / "GroundingDINO_SwinT_OGC.cfg.py", tmp_path)
    with pytest.raises(ScienceT2IError) as err:
        masks.load_grounding_dino(str(tmp_path / ckpt.name))
    msg = str(err.value)
    assert "BERT files" in msg and "nothing is downloaded" in msg
    assert f"--local-dir {models_dir / 'bert-base-uncased'}" in msg
    # found in models/bert-base-uncased
    shutil.copytree(folder / "bert-base-uncased", models_dir / "bert-base-uncased")
    assert masks.load_grounding_dino(str(tmp_path / ckpt.name)).backend == "original"


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_corrupt_checkpoint(tmp_path, original, content):
    folder, _, _ = original
    import shutil
    shutil.copy(folder / "GroundingDINO_SwinT_OGC.cfg.py", tmp_path)
    shutil.copytree(folder / "bert-base-uncased", tmp_path / "bert-base-uncased")
    bad = tmp_path / "groundingdino_swint_ogc.pth"
    bad.write_bytes(content)
    with pytest.raises(ScienceT2IError, match="weights_only=True"):
        masks.load_grounding_dino(str(bad))


def test_pickle_with_code_is_refused(tmp_path, original):
    folder, _, _ = original
    import shutil
    shutil.copy(folder / "GroundingDINO_SwinT_OGC.cfg.py", tmp_path)
    shutil.copytree(folder / "bert-base-uncased", tmp_path / "bert-base-uncased")
    bad = tmp_path / "groundingdino_swint_ogc.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": _Opaque()}, bad)
    with pytest.raises(ScienceT2IError, match="refusing to load"):
        masks.load_grounding_dino(str(bad))


class _Opaque:
    pass


def test_unknown_and_missing_keys(original):
    _, ckpt, source = original
    state = torch.load(ckpt, weights_only=True)["model"]
    with pytest.raises(ScienceT2IError, match="not part of an original GroundingDINO"):
        go.convert_original_state_dict({**state, "some.other.head.weight": torch.zeros(2)})
    partial = {k: v for k, v in state.items() if not k.startswith("transformer.decoder.layers.1.")}
    with pytest.raises(ScienceT2IError, match=r"missing .*decoder\.layers\.1"):
        go.build_from_original(partial, source.config)
    with pytest.raises(ScienceT2IError, match="does not hold a GroundingDINO state dict"):
        go.convert_original_state_dict({"model": {"a": [1, 2]}})


def test_checkpoint_for_another_config(original):
    _, ckpt, source = original
    state = torch.load(ckpt, weights_only=True)["model"]
    config = source.config.__class__.from_dict(source.config.to_dict())
    config.num_queries = 7
    with pytest.raises(ScienceT2IError, match="does not fit"):
        go.build_from_original(state, config)


def test_module_prefix_is_accepted(original):
    _, ckpt, source = original
    state = torch.load(ckpt, weights_only=True)["model"]
    wrapped = {"model": {"module." + k: v for k, v in state.items()}}
    a = go.convert_original_state_dict(wrapped)
    b = go.convert_original_state_dict(state)
    assert a.keys() == b.keys()
