"""A tiny random GPT-2 causal LM saved as a transformers directory (what models/LLM/<name>
holds), with a word-level fast tokenizer built offline."""
from __future__ import annotations

from pathlib import Path

WORDS = ["a", "an", "the", "hard", "green", "tomato", "with", "firm", "skin", "red", "ripe",
         "on", "table", ".", ",", "unripe", "banana", "rose", "wilted"]


def build_tiny_llm(folder: Path, words: list[str] | None = None, seed: int = 0) -> Path:
    """Save a 1-layer GPT-2 with a whitespace word-level tokenizer over ``words``.

    With the default symbol-only vocabulary the model can only ever emit strings such as
    "@3 @17", which is what an unusable model looks like to the validation.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab_words = words if words is not None else [f"@{i}" for i in range(40)]
    vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2}
    for w in vocab_words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                  eos_token="[EOS]", model_max_length=512)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=2, pad_token_id=1)
    model = GPT2LMHeadModel(cfg)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
