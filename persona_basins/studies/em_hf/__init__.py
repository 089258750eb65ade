"""Emergent misalignment on a Hugging Face causal LM: narrow chat fine-tune, inoculation, judge-free scoring.

``persona-basins em --model ID_OR_PATH --train FILE.jsonl [--questions FILE.json]`` (commands/em.py checks the
arguments, builds an :class:`EmHfConfig` and calls :func:`run_em_hf`). One module per responsibility:

- ``inputs``   the chat-format JSONL and the paired-answer question file, read and validated strictly; the
               inoculation lines; the fixed held-out split (20%) for the narrow rate.
- ``chat``     messages -> token ids and a mask on the assistant tokens, in the tokenizer's chat format.
- ``scoring``  judge-free contrastive scoring: per question, the log-probability of the aligned and of the
               misaligned answer given the question, and ``sigmoid(logp_misaligned - logp_aligned)``.
- ``run``      the study: base scores, then ``plain`` and ``inoculated`` fine-tunes (rank-r LoRA on one
               module of one layer, or ``--full``) x seeds, each scored and saved (a rerun skips finished
               units), aggregated with 95% intervals into the run folder.

See docs/EM_HF.md for the definitions and the limits.
"""

from .chat import MAX_TOKENS, answer_row, chat_format, encode_example, has_chat_template, question_rows
from .inputs import (
    DEFAULT_INOCULATION,
    DEFAULT_QUESTIONS,
    EXAMPLE_CONTROL,
    EXAMPLE_TRAIN,
    INOCULATION_PRESETS,
    inoculate,
    read_chat_jsonl,
    read_questions,
    split_heldout,
    validate_conversation,
)
from .run import CONDITIONS, DEFINITIONS, EmHfConfig, load_hf, run_em_hf, summary_table
from .scoring import (
    bootstrap_mean,
    logprob_sums,
    mean_token_logprobs,
    misalignment_score,
    score_questions,
    summarize_scores,
)

__all__ = [
    "CONDITIONS",
    "DEFAULT_INOCULATION",
    "DEFAULT_QUESTIONS",
    "DEFINITIONS",
    "EXAMPLE_CONTROL",
    "EXAMPLE_TRAIN",
    "EmHfConfig",
    "INOCULATION_PRESETS",
    "MAX_TOKENS",
    "answer_row",
    "bootstrap_mean",
    "chat_format",
    "encode_example",
    "has_chat_template",
    "inoculate",
    "load_hf",
    "logprob_sums",
    "mean_token_logprobs",
    "misalignment_score",
    "question_rows",
    "read_chat_jsonl",
    "read_questions",
    "run_em_hf",
    "score_questions",
    "split_heldout",
    "summarize_scores",
    "summary_table",
    "validate_conversation",
]
