"""Tiny random vision-language models saved in the real release formats, built offline.

- ``build_tiny_qwen2_vl(dir)``: a Qwen2VLForConditionalGeneration directory laid out like
  ``Qwen/Qwen2-VL-2B-Instruct`` (config.json, model.safetensors, generation_config.json,
  tokenizer.json + tokenizer_config.json, preprocessor_config.json, chat_template.json);
  a 64x64 image becomes 4 image tokens.
- ``build_tiny_idefics3(dir)``: an Idefics3ForConditionalGeneration directory laid out like
  ``HuggingFaceM4/Idefics3-8B-Llama3`` (the family of SmolVLM; SmolVLM's own processor also
  needs the ``num2words`` package): a 64x64 image is split into 2x2 tiles of 32 px plus the
  global view, 4 image tokens each.

The tokenizer is byte-level BPE without merges (every byte is a token, as in Qwen's own
tokenizer before merges), so any text tokenises and decodes back; the chat special tokens are
added tokens with the ids the config names.
"""
from __future__ import annotations

import json
from pathlib import Path

from tiny_clip import byte_chars

# Qwen2-VL's chat template, as its releases ship it in chat_template.json
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


# Idefics3's chat template, as HuggingFaceM4/Idefics3-8B-Llama3 ships it
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

IDEFICS3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>", "<image>",
                     "<fake_token_around_image>", "<global-img>"]

# Weights a little larger than the usual 0.02, so that the greedy answer of a 1-layer model
# depends on the images and their order (with 0.02 it is the same string whatever they are).
INIT_RANGE = 0.2


def byte_level_tokenizer(specials: list[str], eos: str, pad: str, bos: str | None = None):
    """A PreTrainedTokenizerFast over byte-level BPE with no merges, plus ``specials``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(byte_chars())}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, pad_token=pad,
                                  bos_token=bos, model_max_length=4096)


def save_release(folder: Path, model, tokenizer, image_processor, chat_template: str,
                 processor_config: dict | None = None) -> Path:
    """Write the files a Hub release of a VLM holds: config.json, generation_config.json and
    model.safetensors; tokenizer.json + tokenizer_config.json; preprocessor_config.json;
    chat_template.json; and processor_config.json when the processor has settings of its
    own. (``processor.save_pretrained`` in transformers 5 would nest the image processor in
    processor_config.json instead: also readable, but not what users download.)"""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    (folder / "chat_template.json").write_text(
        json.dumps({"chat_template": chat_template}), encoding="utf-8")
    if processor_config:
        (folder / "processor_config.json").write_text(json.dumps(processor_config),
                                                      encoding="utf-8")
    return folder


def build_tiny_qwen2_vl(folder: Path, seed: int = 0) -> Path:
    """Save a 1-layer Qwen2-VL (hidden 32, vision depth 1, patch 8, merge 2) with its
    processor: 64x64 images are resized to 32x32 = 4x4 patches = 4 image tokens."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    tok = byte_level_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    vocab_size = len(tok)
    torch.manual_seed(seed)
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [2, 3, 3]},  # sums to head_dim / 2 = 8
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"], initializer_range=INIT_RANGE),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                           initializer_range=INIT_RANGE),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], do_sample=False)
    image_processor = Qwen2VLImageProcessor(
        patch_size=8, merge_size=2, temporal_patch_size=2,
        min_pixels=16 * 16, max_pixels=32 * 32)
    return save_release(folder, model, tok, image_processor, QWEN2_VL_CHAT_TEMPLATE)


def build_tiny_idefics3(folder: Path, seed: int = 0) -> Path:
    """Save a 1-layer Idefics3 (Llama text model, hidden 32; SigLIP-style vision tower of
    32 px with 8 px patches, pixel shuffle 2 -> 4 tokens per tile) with its processor."""
    import torch
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
    )

    tok = byte_level_tokenizer(IDEFICS3_SPECIALS, eos="<end_of_utterance>",
                               pad="<|end_of_text|>", bos="<|begin_of_text|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in IDEFICS3_SPECIALS}
    torch.manual_seed(seed)
    cfg = Idefics3Config(
        text_config=dict(
            model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=2048, initializer_range=INIT_RANGE,
            bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<end_of_utterance>"],
            pad_token_id=ids["<|end_of_text|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8,
                           initializer_range=INIT_RANGE),
        scale_factor=2, image_token_id=ids["<image>"], pad_token_id=ids["<|end_of_text|>"])
    model = Idefics3ForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<end_of_utterance>"],
        pad_token_id=ids["<|end_of_text|>"], do_sample=False)
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 64},
                                             max_image_size={"longest_edge": 32})
    return save_release(folder, model, tok, image_processor, IDEFICS3_CHAT_TEMPLATE,
                        processor_config={"image_seq_len": 4,
                                          "processor_class": "Idefics3Processor"})
