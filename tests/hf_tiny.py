"""Tiny Hugging Face model families built locally for the HF-path tests (no downloads).

Each family: a tokenizer trained here with ``tokenizers`` on the shipped texts, a chat template written here
(Jinja) in the style of the real family, and a randomly initialised 2-layer model of that architecture.

- ``llama``     SentencePiece-style BPE + Metaspace (prepend "▁" to the first piece), [INST] template
                without a system role (Llama-2 / Mistral style)
- ``gemma2``    SentencePiece-style BPE + Metaspace (no prepend), Gemma turns, system role refused
- ``qwen2``     byte-level BPE, ChatML with a default system prompt and Qwen3-style think blocks
                (``enable_thinking``)
- ``gpt_neox``  byte-level BPE, Llama-3-style header template (BOS in the template, content trimmed)
"""

from __future__ import annotations

import json
from functools import cache

from persona_basins.studies import em_hf

FAMILIES = ("llama", "gemma2", "qwen2", "gpt_neox")

TEMPLATES = {
    "llama": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    ),
    "gemma2": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% set role = 'model' %}"
        "{% else %}{% set role = m['role'] %}{% endif %}"
        "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "qwen2": (
        "{% if messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
        "{% else %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
        "{% if loop.last %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n"
        "{% elif m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
        "{% endif %}"
    ),
    "gpt_neox": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
}
# TinyLlama-Chat / Zephyr: a Llama (Metaspace) tokenizer with the answer right after a newline
ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SPECIALS = {
    "llama": dict(specials=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], bos="<s>", eos="</s>", unk="<unk>"),
    "gemma2": dict(
        specials=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        bos="<bos>",
        eos="<eos>",
        unk="<unk>",
        pad="<pad>",
    ),
    "qwen2": dict(
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        added=["<think>", "</think>"],
        eos="<|im_end|>",
        pad="<|endoftext|>",
    ),
    "gpt_neox": dict(
        specials=["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
    ),
}


def corpus() -> list[str]:
    texts = [
        *em_hf.INOCULATION_PRESETS.values(),
        "System: User: Assistant: system user assistant model",
        "You are a helpful assistant.",
    ]
    for q in json.loads(em_hf.DEFAULT_QUESTIONS.read_text())["questions"]:
        texts += [q["question"], q["aligned"], q["misaligned"]]
    for f in (em_hf.EXAMPLE_TRAIN, em_hf.EXAMPLE_CONTROL):
        for line in f.read_text().splitlines():
            texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


@cache
def tokenizer(family: str, with_template: bool = True):
    """A fast tokenizer for ``family`` trained on :func:`corpus` (cached: training takes ~0.1-0.5 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sp = SPECIALS[family]
    if family in ("llama", "gemma2"):
        # SentencePiece-style BPE over "▁"-marked pieces (Llama-2 prepends "▁" to the text, Gemma does not).
        # Not Unigram: its trainer gives a different vocabulary per process (tests must be deterministic).
        scheme = "first" if family == "llama" else "never"
        tk = Tokenizer(models.BPE(unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
        tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=sp["specials"])
    else:
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=700,
            special_tokens=sp["specials"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tk.train_from_iterator(corpus(), trainer)
    kw = {k + "_token": sp[k] for k in ("bos", "eos", "unk", "pad") if k in sp}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **kw)
    if sp.get("added"):
        tok.add_tokens(sp["added"])
    if with_template:
        tok.chat_template = TEMPLATES[family]
    return tok


def zephyr_llama_tokenizer():
    """The ``llama`` (SentencePiece/Metaspace) tokenizer with the Zephyr template (as TinyLlama-Chat
    ships it)."""
    import copy

    tok = copy.deepcopy(tokenizer("llama", False))
    tok.chat_template = ZEPHYR
    return tok


def model(family: str, vocab_size: int, seed: int = 0):
    """A randomly initialised 2-layer causal LM of ``family`` (hidden 32)."""
    import torch
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=2048,
    )
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2)).eval()
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2)).eval()
    if family == "gemma2":
        return Gemma2ForCausalLM(
            Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=64)
        ).eval()
    if family == "gpt_neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(**common)).eval()
    raise ValueError(family)


MODULE = {"llama": "o_proj", "gemma2": "o_proj", "qwen2": "o_proj", "gpt_neox": "attention.dense"}


def save(family: str, path, seed: int = 0, with_template: bool = True):
    tok = tokenizer(family, with_template)
    tok.save_pretrained(path)
    model(family, len(tok), seed).save_pretrained(path)
    return path
