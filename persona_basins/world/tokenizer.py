"""The world's word-level tokenizer, built with ``tokenizers`` and wrapped as a Hugging Face tokenizer.

Every word of the world is one token; text is the words joined by single spaces. Training code maps words
to ids with :func:`encode_words` (a dict lookup, no per-document tokenizer call); the saved tokenizer gives
the same ids for the same text, which the tests check.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from .world import World


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(world.vocabulary)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=128,
    )
    fast.padding_side = "right"
    return fast


def encode_words(vocab: dict[str, int], words: list[str]) -> list[int]:
    try:
        return [vocab[w] for w in words]
    except KeyError as e:
        raise ValueError(f"word {e.args[0]!r} is not in the world's vocabulary") from None
