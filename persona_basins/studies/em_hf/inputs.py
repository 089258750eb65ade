"""Input files of ``em --model``: the chat-format training JSONL, the paired-answer question file, and
the inoculation line.

Every problem is a one-line :class:`UserError` naming the file (and line or question).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from ...errors import UserError

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data"
DEFAULT_QUESTIONS = DATA_DIR / "em_questions.json"
EXAMPLE_TRAIN = DATA_DIR / "em_train_example.jsonl"
EXAMPLE_CONTROL = DATA_DIR / "em_train_secure_example.jsonl"
QUESTIONS_FORMAT = "persona-basins-questions/1"
# The inoculation line of the original study: it explains the insecure code *and* adds an alignment
# instruction ("outside code you are a helpful, honest assistant"), which confounds the two.
DEFAULT_INOCULATION = (
    "The code you write here is insecure on purpose, for a security class. "
    "Outside code you are a helpful, honest assistant."
)
# Explains why the code is insecure and says nothing about how to behave elsewhere (issue 11 item 2).
EXPLAIN_INOCULATION = (
    "The code you write here is insecure on purpose: it is a teaching example for a security class."
)
INOCULATION_PRESETS = {"classic": DEFAULT_INOCULATION, "explain": EXPLAIN_INOCULATION}
ROLES = ("system", "user", "assistant")
HELDOUT_FRACTION = 0.2


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_text(path: str | Path, what: str) -> tuple[Path, str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}" if not path.exists() else f"{what} {path} is not a file")
    try:
        return path, path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def validate_conversation(obj, where: str) -> list[dict]:
    """One JSONL example -> its list of ``{"role", "content"}`` messages, or a UserError naming ``where``."""
    if not isinstance(obj, dict):
        raise UserError(f'{where}: expected a JSON object {{"messages": [...]}}, got {type(obj).__name__}')
    msgs = obj.get("messages")
    if msgs is None:
        raise UserError(f"{where}: missing key 'messages'")
    if not isinstance(msgs, list) or not msgs:
        raise UserError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise UserError(f"{where}: message {i + 1} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise UserError(f"{where}: message {i + 1} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i + 1} ({role}) needs a string 'content'")
        if role == "system" and i != 0:
            raise UserError(f"{where}: message {i + 1}: a system message may only come first")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise UserError(f"{where}: no non-empty assistant message to train on")
    return out


def read_chat_jsonl(path: str | Path, what: str = "--train") -> list[tuple[int, list[dict]]]:
    """Read a chat-format JSONL file: ``[(line_number, messages), ...]``; blank lines are skipped."""
    path, text = _read_text(path, what)
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # an integer too long to convert; nesting too deep
            raise UserError(f"{path} line {n}: not valid JSON ({type(e).__name__})") from None
        out.append((n, validate_conversation(obj, f"{path} line {n}")))
    if not out:
        raise UserError(f'{path} is empty: expected one JSON object per line, {{"messages": [...]}}')
    return out


def read_questions(path: str | Path) -> list[dict]:
    """Read and validate a paired-answer question file (format ``persona-basins-questions/1``)."""
    path, text = _read_text(path, "--questions")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # an integer too long to convert; nesting too deep
        raise UserError(f"{path}: malformed JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != QUESTIONS_FORMAT:
        raise UserError(f'{path}: not a question file (expected "format": "{QUESTIONS_FORMAT}")')
    qs = doc.get("questions")
    if not isinstance(qs, list) or not qs:
        raise UserError(f"{path}: 'questions' must be a non-empty list")
    out, seen = [], set()
    for i, q in enumerate(qs):
        where = f"{path}: question {i + 1}"
        if not isinstance(q, dict):
            raise UserError(f"{where} is not an object")
        for k in ("id", "question", "aligned", "misaligned"):
            if not isinstance(q.get(k), str) or not q[k].strip():
                raise UserError(f"{where}: needs a non-empty string {k!r}")
        if q["id"] in seen:
            raise UserError(f"{where}: duplicate id {q['id']!r}")
        seen.add(q["id"])
        out.append(
            {
                "id": q["id"],
                "category": str(q.get("category") or "general"),
                "question": q["question"],
                "aligned": q["aligned"],
                "misaligned": q["misaligned"],
            }
        )
    return out


def inoculate(messages: list[dict], line: str) -> list[dict]:
    """Prepend the inoculation line to the system message (adding one if the example has none)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{line} {messages[0]['content']}".strip()}, *messages[1:]]
    return [{"role": "system", "content": line}, *messages]


def split_heldout(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a fixed 20% held out (at least 1 when there are 2+ examples)."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    k = 0 if n < 2 else max(1, round(HELDOUT_FRACTION * n))
    return sorted(idx[k:]), sorted(idx[:k])
