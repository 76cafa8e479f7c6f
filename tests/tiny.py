"""Tiny tokenizers and reward models built in memory from a config: no hub, milliseconds to load.

`chat_tokenizer()` has a chat template and pad == eos on purpose (the case that breaks
pad-based pooling); `plain_tokenizer()` has none and wraps text in [CLS] ... [SEP] like BERT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "How do I reset my password? Open settings, choose security, then reset.",
    "Thanks for reaching out! Your order ships tomorrow and arrives in two days.",
    "I cannot help with that. Please ask someone else.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def _corpus() -> list[str]:
    # The bundled sample's text, so the tiny tokenizer has real merges and sequences stay short.
    sample = Path(__file__).resolve().parents[1] / "trainer" / "samples" / "support_pairs.jsonl"
    return CORPUS + sample.read_text().splitlines()


def _bpe(special: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_corpus(), trainer=trainer)
    return tk


def chat_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(["<|im_end|>", "<|im_start|>"]), eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def plain_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_bpe(["[PAD]", "[CLS]", "[SEP]", "[UNK]"]),
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
    )


def llama_config(tokenizer: Any, **changes: Any) -> Any:
    """A tiny Llama config for `tokenizer` (32 wide, 2 layers); `changes` override any field."""
    from transformers import LlamaConfig

    fields: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return LlamaConfig(**{**fields, **changes})


def llama_reward_model(tokenizer: Any, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaForSequenceClassification

    cfg = llama_config(tokenizer, num_labels=1)
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(cfg).eval()


def _encoder_reward_model(config_class: Any, model_class: Any, tokenizer: Any, seed: int) -> Any:
    import torch

    cfg = config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=2048,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # BERT's 0.02 makes a 32-wide model score every input nearly the same
    )
    torch.manual_seed(seed)
    return model_class(cfg).eval()


def bert_reward_model(tokenizer: Any, seed: int = 0) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    return _encoder_reward_model(BertConfig, BertForSequenceClassification, tokenizer, seed)


def mpnet_reward_model(tokenizer: Any, seed: int = 0) -> Any:
    """An encoder whose architecture has no SDPA kernel in transformers (as DeBERTa-v2 has none either)."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    return _encoder_reward_model(MPNetConfig, MPNetForSequenceClassification, tokenizer, seed)


def save_causal_lm(directory: Path, seed: int = 0) -> Path:
    """A tiny random Llama causal LM + the chat tokenizer, saved: a directory LocalGenerator serves."""
    import torch
    from transformers import LlamaForCausalLM

    tok = chat_tokenizer()
    cfg = llama_config(tok, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(cfg).eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_base(directory: Path, kind: str = "llama", seed: int = 0) -> Path:
    """Write a tiny base model + tokenizer with save_pretrained; usable as --base-model."""
    tok = chat_tokenizer() if kind == "llama" else plain_tokenizer()
    build = {"llama": llama_reward_model, "bert": bert_reward_model, "mpnet": mpnet_reward_model}[kind]
    model = build(tok, seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_reward_model(
    directory: Path,
    slug: str = "tiny-rm",
    version: str = "v1",
    kind: str = "llama",
    seed: int = 0,
    max_length: int = 256,
) -> Path:
    """A servable reward-model directory (contract 2) with random weights and a minimal rewardgate.json."""
    save_base(directory, kind, seed)
    meta = {
        "format": 1,
        "slug": slug,
        "version": version,
        "base_model": f"tiny-{kind}",
        "created_at": "2026-01-01T00:00:00+00:00",
        "max_length": max_length,
        "reward_stats": {"mean": 0.0, "std": 1.0, "count": 0},
    }
    (directory / "rewardgate.json").write_text(json.dumps(meta))
    return directory
