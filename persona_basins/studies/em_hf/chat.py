"""Chat formatting for ``em --model``: messages -> token ids with a mask on the assistant tokens."""

from __future__ import annotations

from ...errors import UserError

PLAIN_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
MAX_TOKENS = 1024  # examples are truncated to this many tokens


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def _template(tok, messages: list[dict], generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _merge_system(messages: list[dict]) -> list[dict]:
    """For templates without a system role: the system text goes in front of the first user message."""
    if not messages or messages[0]["role"] != "system":
        return messages
    rest = [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{messages[0]['content']}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": messages[0]["content"]}, *rest]


def _template_pieces(tok, messages: list[dict]) -> list[tuple[str, bool]]:
    """Chat-template text split into (text, is_assistant_answer) pieces."""
    asst = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    pieces, prev = [], ""
    for i in asst:
        prompt, full = _template(tok, messages[:i], True), _template(tok, messages[: i + 1], False)
        if not (prompt.startswith(prev) and full.startswith(prompt)):
            break
        pieces += [(prompt[len(prev):], False), (full[len(prompt):], True)]
        prev = full
    else:
        whole = _template(tok, messages, False)
        if whole.startswith(prev) and len(whole) > len(prev):
            pieces.append((whole[len(prev):], False))
        return pieces
    # the template rewrites earlier turns (e.g. drops reasoning): train on the last answer only
    i = asst[-1]
    prompt, full = _template(tok, messages[:i], True), _template(tok, messages[: i + 1], False)
    if not full.startswith(prompt):
        raise UserError("the chat template does not render the answer after the generation prompt; "
                        "cannot tell the assistant tokens apart")
    return [(prompt, False), (full[len(prompt):], True)]


def _plain_pieces(messages: list[dict], generation_prompt: bool = False) -> list[tuple[str, bool]]:
    pieces = []
    for m in messages:
        if m["role"] == "assistant":
            pieces += [("Assistant:", False), (f" {m['content']}\n", True)]
        else:
            pieces.append((f"{PLAIN_LABELS[m['role']]}: {m['content']}\n", False))
    if generation_prompt:
        pieces.append(("Assistant:", False))
    return pieces


def _tokenize_pieces(tok, pieces: list[tuple[str, bool]], *, bos: bool) -> tuple[list[int], list[bool]]:
    ids: list[int] = []
    mask: list[bool] = []
    if bos and tok.bos_token_id is not None:
        ids.append(int(tok.bos_token_id))
        mask.append(False)
    for text, is_answer in pieces:
        if not text:
            continue
        t = tok(text, add_special_tokens=False)["input_ids"]
        ids += [int(x) for x in t]
        mask += [is_answer] * len(t)
    return ids, mask


def _render(tok, messages: list[dict], *, generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Messages -> (token ids, assistant-token mask) in the tokenizer's chat format."""
    if not has_chat_template(tok):
        return _tokenize_pieces(tok, _plain_pieces(messages, generation_prompt), bos=True)
    try:
        if generation_prompt:
            return _tokenize_pieces(tok, [(_template(tok, messages, True), False)], bos=False)
        return _tokenize_pieces(tok, _template_pieces(tok, messages), bos=False)
    except UserError:
        raise
    except Exception as e:  # jinja raises for roles the template does not support, e.g. system
        if messages and messages[0]["role"] == "system":
            return _render(tok, _merge_system(messages), generation_prompt=generation_prompt)
        raise UserError(f"the chat template failed: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


def encode_example(tok, messages: list[dict], where: str = "example") -> tuple[list[int], list[bool]]:
    """One training example -> (ids, loss mask on assistant tokens), truncated to ``MAX_TOKENS``."""
    try:
        ids, mask = _render(tok, messages)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    ids, mask = ids[:MAX_TOKENS], mask[:MAX_TOKENS]
    if not any(mask[1:]):
        raise UserError(f"{where}: no assistant tokens within the first {MAX_TOKENS} tokens")
    return ids, mask


def question_rows(tok, questions: list[dict]) -> list[tuple[list[int], list[bool]]]:
    """Two scoring rows per question (aligned, misaligned): prompt ids + answer ids, mask on the answer."""
    rows = []
    for q in questions:
        prompt, _ = _render(tok, [{"role": "user", "content": q["question"]}], generation_prompt=True)
        for key in ("aligned", "misaligned"):
            text = q[key] if has_chat_template(tok) else f" {q[key]}"
            ans = [int(x) for x in tok(text, add_special_tokens=False)["input_ids"]]
            if not ans:
                raise UserError(f"question {q['id']!r}: the {key} answer tokenizes to nothing")
            rows.append((prompt + ans, [False] * len(prompt) + [True] * len(ans)))
    return rows
