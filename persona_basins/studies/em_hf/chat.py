"""Chat formatting for ``em --model``: messages -> token ids with a mask on the assistant tokens.

The whole conversation is rendered once by ``tokenizer.apply_chat_template(..., tokenize=False)`` and
tokenized once (``add_special_tokens=False``, as ``apply_chat_template(tokenize=True)`` does), so the ids are
exactly the ones the model sees in a real conversation, for every tokenizer family (byte-level BPE,
SentencePiece / Metaspace, WordPiece, ...). Tokenizing pieces separately would not be: a Metaspace tokenizer
prefixes every piece with "▁" and merges differ at the seams. Each assistant message's text is located in the
rendered string by character position, and a token belongs to the answer when its character span (the fast
tokenizer's ``offset_mapping``) overlaps the answer's.

- Training rows mask the answer plus the end-of-turn text the template adds (e.g. ``<|im_end|>``): the model
  learns to stop. Scoring rows mask the answer text only, and end there.
- Reasoning templates (Qwen3 style) are rendered with ``enable_thinking=False``: the template then puts an
  empty think block before the answer, in the prompt, never scored. :func:`chat_format` states what happened.
- Templates that reject a system role get the system text in front of the first user message.
- Without a chat template: ``System: ...`` / ``User: ...`` / ``Assistant: ...`` lines after the BOS token.
"""

from __future__ import annotations

from ...errors import UserError

PLAIN_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
MAX_TOKENS = 1024  # examples are truncated to this many tokens
TEMPLATE_KWARGS = {"enable_thinking": False}  # ignored by templates that do not read it


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _apply(tok, messages: list[dict], generation_prompt: bool, **extra) -> str:
    kw = {**TEMPLATE_KWARGS, **extra}
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kw)


def merge_system(messages: list[dict]) -> list[dict]:
    """For templates without a system role: the system text goes in front of the first user message."""
    if not messages or messages[0]["role"] != "system":
        return messages
    rest = [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{messages[0]['content']}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": messages[0]["content"]}, *rest]


def _find_content(text: str, content: str, start: int, where: str) -> tuple[int, int]:
    """Character span of ``content`` in ``text`` at or after ``start`` (templates may trim it)."""
    for c in (content, content.strip()):
        if c:
            i = text.find(c, start)
            if i >= 0:
                return i, i + len(c)
    raise UserError(
        f"{where}: the chat template does not render the assistant text verbatim; "
        "cannot locate the answer tokens"
    )


def _special_prefix(tok, text: str, pos: int) -> int:
    """End of the special token(s) right at ``pos`` (the end-of-turn marker), else ``pos``."""
    specials = sorted({t for t in getattr(tok, "all_special_tokens", []) if t}, key=len, reverse=True)
    for s in specials:
        if text.startswith(s, pos):
            return pos + len(s)
    return pos


class _NoSystemRole(Exception):
    pass


def _template_spans(tok, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int, int]]]:
    """Rendered text and, per assistant message, (answer start, answer end, end of its turn) in characters."""
    text = _apply(tok, messages, False)
    system = messages[0]["content"].strip() if messages[0]["role"] == "system" else ""
    if system and system not in text:
        raise _NoSystemRole  # the template silently drops the system message (e.g. some [INST] templates)
    spans, cursor = [], 0
    for k, m in enumerate(messages):
        if m["role"] != "assistant" or not m["content"].strip():
            continue
        prompt = _apply(tok, messages[:k], True) if k else ""
        if prompt and text.startswith(prompt):
            cursor = max(cursor, len(prompt))
        a, b = _find_content(text, m["content"], cursor, where)
        turn = _apply(tok, messages[: k + 1], False)
        end = len(turn) if text.startswith(turn) and len(turn) >= b else _special_prefix(tok, text, b)
        spans.append((a, b, end))
        cursor = end
    return text, spans


def _plain_spans(messages: list[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    text, spans = "", []
    for m in messages:
        if m["role"] == "assistant":
            text += "Assistant: "
            a = len(text)
            text += m["content"]
            b = len(text)
            text += "\n"
            if m["content"].strip():
                spans.append((a, b, len(text)))
        else:
            text += f"{PLAIN_LABELS[m['role']]}: {m['content']}\n"
    return text, spans


def render(tok, messages: list[dict], where: str = "example") -> tuple[str, list[tuple[int, int, int]], bool]:
    """``(text, spans, bos)``: the conversation as the model reads it, and ``bos``: whether to prepend the
    BOS id (plain format only)."""
    if not has_chat_template(tok):
        text, spans = _plain_spans(messages)
        return text, spans, tok.bos_token_id is not None
    try:
        text, spans = _template_spans(tok, messages, where)
    except UserError:
        raise
    except Exception as e:  # jinja raises for roles the template does not support (system); or it drops them
        if messages and messages[0]["role"] == "system":
            return render(tok, merge_system(messages), where)
        raise UserError(f"{where}: the chat template failed: {_first_line(e)}") from None
    return text, spans, False


def _check_known(tok, text: str, ids: list[int], offsets, where: str, contents: list[str]) -> None:
    """Refuse message text the tokenizer does not know: a token read as the unknown token (where the tokenizer
    has one) that is not the unknown token's own text and comes from a message (``contents``; the template's
    own markup is the model's format, not the user's input). A model cannot be trained or scored on it."""
    unk_id, unk = getattr(tok, "unk_token_id", None), getattr(tok, "unk_token", None)
    if unk_id is None:
        return
    for token_id, (start, end) in zip(ids, offsets):
        piece = text[start:end]
        if token_id == unk_id and piece != unk and any(piece in c for c in contents):
            raise UserError(
                f"{where}: {piece!r} is not in the tokenizer's vocabulary (it would be read as "
                f"{unk}); the model cannot read this text"
            )


def _check_fits(n_tokens: int, context: int | None, where: str, truncated: bool = False) -> None:
    if context is not None and n_tokens > context:
        cut = f" (after truncation to {MAX_TOKENS})" if truncated else ""
        raise UserError(
            f"{where}: {n_tokens} tokens{cut}, longer than the model's context of {context} positions"
        )


def tokenize_spans(
    tok,
    text: str,
    spans: list[tuple[int, int]],
    *,
    bos: bool,
    where: str = "example",
    contents: tuple[str, ...] = (),
) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` and a mask: True where a token's characters overlap one of ``spans``; text of
    the messages ``contents`` that the tokenizer does not know is a UserError naming ``where``."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(x) for x in enc["input_ids"]]
    _check_known(tok, text, ids, enc["offset_mapping"], where, list(contents))
    mask = [any(s < b and e > a for a, b in spans) for s, e in enc["offset_mapping"]]
    if bos:
        ids, mask = [int(tok.bos_token_id), *ids], [False, *mask]
    return ids, mask


def encode_example(
    tok, messages: list[dict], where: str = "example", *, context: int | None = None
) -> tuple[list[int], list[bool]]:
    """One training example -> (ids, loss mask on assistant tokens and their end-of-turn), at most
    ``MAX_TOKENS`` long; one still longer than ``context`` (the model's positions) is a UserError."""
    text, spans, bos = render(tok, messages, where)
    contents = tuple(m["content"] for m in messages)
    ids, mask = tokenize_spans(
        tok, text, [(a, end) for a, _, end in spans], bos=bos, where=where, contents=contents
    )
    ids, mask = ids[:MAX_TOKENS], mask[:MAX_TOKENS]
    _check_fits(len(ids), context, where, truncated=len(ids) == MAX_TOKENS)
    if not any(mask[1:]):
        raise UserError(f"{where}: no assistant tokens within the first {MAX_TOKENS} tokens")
    return ids, mask


def answer_row(
    tok, question: str, answer: str, where: str, *, context: int | None = None
) -> tuple[list[int], list[bool]]:
    """The conversation (question, answer) up to the answer's last token, with the mask on the
    answer text only."""
    text, spans, bos = render(
        tok, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], where
    )
    a, b, _ = spans[-1]
    ids, mask = tokenize_spans(tok, text, [(a, b)], bos=bos, where=where, contents=(question, answer))
    if not any(mask[1:]):
        raise UserError(f"{where}: the answer tokenizes to nothing")
    last = max(i for i, m in enumerate(mask) if m)
    _check_fits(last + 1, context, where)
    return ids[: last + 1], mask[: last + 1]


def question_rows(
    tok, questions: list[dict], *, context: int | None = None
) -> list[tuple[list[int], list[bool]]]:
    """Two scoring rows per question (aligned, misaligned): the whole conversation, mask on the answer."""
    return [
        answer_row(tok, q["question"], q[key], f"question {q['id']!r} ({key} answer)", context=context)
        for q in questions
        for key in ("aligned", "misaligned")
    ]


def chat_format(tok) -> dict:
    """How conversations are rendered for this tokenizer, for the run's metrics (probed on a
    short exchange)."""
    if not has_chat_template(tok):
        return {
            "format": "plain",
            "system_role": "native",
            "thinking": "none (no chat template)",
            "answer_prefix": "",
            "template_kwargs": {},
        }
    user, asst = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}
    try:
        probe = "System probe 7f3a"
        native = probe in _apply(tok, [{"role": "system", "content": probe}, user], True)
    except Exception:  # any template error means: no system role
        native = False
    system_role = "native" if native else "merged into the first user message"
    prompt, full = _apply(tok, [user], True), _apply(tok, [user, asst], False)
    default = tok.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    i = full.find(asst["content"], len(prompt) if full.startswith(prompt) else 0)
    prefix = full[len(prompt) : i] if full.startswith(prompt) and i >= 0 else ""
    source = str(tok.chat_template)
    if default != prompt:
        thinking = (
            "disabled: rendered with enable_thinking=False, so the template puts an empty think block "
            "before every answer (part of the prompt, never scored or trained)"
        )
    elif "<think>" in source or "</think>" in source:
        thinking = (
            "the template has think blocks but no enable_thinking switch; answers are rendered as the "
            "template renders a finished assistant turn (no reasoning), and only the answer text is scored"
        )
    else:
        thinking = "none (the template has no think block)"
    return {
        "format": "chat_template",
        "system_role": system_role,
        "thinking": thinking,
        "answer_prefix": prefix,
        "template_kwargs": dict(TEMPLATE_KWARGS),
    }
