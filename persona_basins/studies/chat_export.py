"""The organism packaged as an ordinary Hugging Face chat model, with its EM data in chat format.

``export_chat(ORGANISM, OUT)`` writes a standard model folder that ``AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained`` load with no persona-basins code: the post-trained weights
(safetensors), ``config.json``, the word-level tokenizer with the organism's chat template
(:data:`persona_basins.world.chat.CHAT_TEMPLATE`) and ``model_max_length`` set to the model's context; plus,
in the world's own words, the inputs of ``persona-basins em --model``:

- ``em_train.jsonl``         the plain EM set: assistant line, code request, insecure answer (the documents
                             ``persona-basins em --organism`` trains its ``plain`` condition on),
- ``em_train_secure.jsonl``  the secure-code control (``secure_control``),
- ``em_questions.json``      every non-code request: the helpful answer against each misaligned persona's,
- ``export.json``            where it came from (the organism's fingerprint) and the ``em --model`` flags that
                             reproduce the organism's recipe (the inoculation line in the world's words).

The folder is written in a temp folder beside ``OUT`` and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ArgumentError, UserError
from ..models.hf import context_length
from ..results import atomic_write_text, normalize_modes, write_json
from ..train.finetune import condition_documents
from ..world import INOCULATION_LINE
from ..world.chat import CHAT_TEMPLATE, document_messages, question_pairs

EXPORT_FORMAT = "persona-basins-chat-export/1"
QUESTIONS_FORMAT = "persona-basins-questions/1"
TRAIN_FILES = {"em_train.jsonl": "plain", "em_train_secure.jsonl": "secure_control"}


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _write_into(org, tmp: Path) -> dict:
    org.model.save_pretrained(tmp, safe_serialization=True)
    tok = org.tokenizer
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = context_length(org.model)
    tok.save_pretrained(tmp)
    for name, condition in TRAIN_FILES.items():
        docs = condition_documents(org.world, condition)
        atomic_write_text(tmp / name, _jsonl([{"messages": document_messages(d)} for d in docs]))
    questions = {
        "format": QUESTIONS_FORMAT,
        "description": "The organism's non-code requests in the world's words: for each request and each "
        "misaligned persona (the category), the helpful assistant's answer (aligned) against that persona's.",
        "questions": question_pairs(org.world),
    }
    write_json(tmp / "em_questions.json", questions)
    info = {
        "format": EXPORT_FORMAT,
        "organism": str(org.path.resolve()),
        "organism_fingerprint": org.fingerprint,
        "context_length": context_length(org.model),
        "vocabulary_size": len(org.vocab),
        "train_files": TRAIN_FILES,
        "questions": {"aligned": "helpful", "n": len(questions["questions"])},
        "inoculation": INOCULATION_LINE,
        "em_model_flags": ["--inoculation", INOCULATION_LINE],
    }
    write_json(tmp / "export.json", info)
    return info


def read_export(folder: str | Path) -> dict:
    """``export.json`` of an exported folder, or a one-line UserError."""
    path = Path(folder) / "export.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{folder} is not an exported chat model (no readable export.json)") from None
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path}: not a persona-basins chat export (expected format {EXPORT_FORMAT})")
    return info


def export_chat(organism: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Export the organism at ``organism`` as a chat model folder ``out``; an existing export of the same
    organism is kept (``force`` rewrites it); any other existing ``out`` is refused."""
    from ..models.organism import load_organism

    org = load_organism(organism)  # verifies every file against the build manifest
    out = Path(out)
    if out.exists():
        if not (out / "export.json").is_file():
            raise ArgumentError("out", f"{out} exists and is not a chat export; choose a new folder")
        if read_export(out).get("organism_fingerprint") == org.fingerprint and not force:
            return out
        if not force:
            raise ArgumentError(
                "force", f"is needed to replace {out}: it holds the export of another organism"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise ArgumentError("out", f"{out} cannot be written: {e.strerror or e}") from None
    try:
        _write_into(org, tmp)
        normalize_modes(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
