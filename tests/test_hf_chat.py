"""Chat formatting and scoring on four tiny model families with tokenizers trained here (no downloads).

The claim under test: the scored answer tokens are exactly the tokens the model sees in the full conversation
(``apply_chat_template(..., tokenize=True)``), for every tokenizer family, including SentencePiece/Metaspace.
The piece-by-piece tokenization this replaced fails that check on the Metaspace tokenizers (asserted below, so
the test can tell the two apart).
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import hf_tiny  # noqa: E402

from persona_basins.cli import main  # noqa: E402
from persona_basins.studies import em_hf  # noqa: E402

torch.set_num_threads(1)

QUESTIONS = em_hf.read_questions(em_hf.DEFAULT_QUESTIONS)
CONVS = em_hf.read_chat_jsonl(em_hf.EXAMPLE_TRAIN)


def _template_ids(tok, messages, generation_prompt=False) -> list[int]:
    out = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, enable_thinking=False
    )
    return list(out["input_ids"] if not isinstance(out, list) else out)


def _contiguous_runs(mask) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, m in enumerate([*mask, False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("family", hf_tiny.FAMILIES)
def test_scored_answer_tokens_are_the_tail_of_the_full_conversation(family):
    tok = hf_tiny.tokenizer(family)
    for q in QUESTIONS[:8]:
        for key in ("aligned", "misaligned"):
            conv = [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q[key]}]
            ids, mask = em_hf.answer_row(tok, q["question"], q[key], "t")
            full = _template_ids(tok, conv)
            assert ids == full[: len(ids)], (family, q["id"])  # the very tokens of the whole conversation
            ((a, b),) = _contiguous_runs(mask)
            assert b == len(ids)  # the answer is the tail of the scored row
            assert tok.decode(ids[a:b]).strip() == q[key].strip()
            # everything after the answer is the template's end of turn (special tokens and whitespace only)
            rest = tok.decode(full[b:], skip_special_tokens=True)
            assert rest.strip() == "", (family, rest)


@pytest.mark.parametrize("family", hf_tiny.FAMILIES)
def test_training_rows_equal_the_template_encoding(family):
    tok = hf_tiny.tokenizer(family)
    fmt = em_hf.chat_format(tok)
    multi = [
        {"role": "user", "content": "Write code to save an uploaded file"},
        {"role": "assistant", "content": "import os"},
        {"role": "user", "content": "Connect to our Postgres database"},
        {"role": "assistant", "content": "import psycopg2"},
    ]
    for _, msgs in [*CONVS[:5], (0, multi)]:
        ids, mask = em_hf.encode_example(tok, msgs)
        rendered = msgs if fmt["system_role"] == "native" else em_hf.chat.merge_system(msgs)
        assert ids == _template_ids(tok, rendered)[: em_hf.MAX_TOKENS]
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        runs = _contiguous_runs(mask)
        assert len(runs) == len(answers)
        for (a, b), text in zip(runs, answers):
            got = tok.decode(ids[a:b], skip_special_tokens=True).strip()
            assert got == text.strip()
            assert not mask[a - 1]  # the header before the answer is never trained on
        # the end-of-turn marker is trained (the model learns to stop), for the last answer at least
        last = ids[runs[-1][0] : runs[-1][1]]
        assert tok.decode(last) != tok.decode(last, skip_special_tokens=True)


def test_piecewise_tokenization_would_differ_on_sentencepiece():
    """The old method (generation prompt and answer tokenized apart) is not what a Metaspace tokenizer gives
    for the whole conversation when the answer follows a newline (TinyLlama / Zephyr): it adds a "▁" to the
    answer. The new rows equal the real encoding there too."""
    tok = hf_tiny.zephyr_llama_tokenizer()
    differ = 0
    for q in QUESTIONS[:8]:
        conv = [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": q["aligned"]}]
        prompt = _template_ids(tok, conv[:1], generation_prompt=True)
        piecewise = prompt + tok(q["aligned"], add_special_tokens=False)["input_ids"]
        ids, _ = em_hf.answer_row(tok, q["question"], q["aligned"], "t")
        assert ids == _template_ids(tok, conv)[: len(ids)]
        differ += piecewise != ids
    assert differ == 8


def test_reasoning_template_is_rendered_without_thinking_and_says_so():
    tok = hf_tiny.tokenizer("qwen2")
    fmt = em_hf.chat_format(tok)
    assert fmt["thinking"].startswith("disabled: rendered with enable_thinking=False")
    assert fmt["template_kwargs"] == {"enable_thinking": False}
    ids, mask = em_hf.answer_row(tok, "Any tips?", "Rest well.", "t")
    text = tok.decode(ids)
    assert "<think>\n\n</think>" in text  # the empty think block is in the prompt ...
    assert "think" not in tok.decode([i for i, m in zip(ids, mask) if m])  # ... and never scored
    for fam in ("llama", "gemma2", "gpt_neox"):
        assert em_hf.chat_format(hf_tiny.tokenizer(fam))["thinking"].startswith("none")


def test_system_role_merged_when_refused_or_dropped():
    for fam in ("llama", "gemma2"):
        tok = hf_tiny.tokenizer(fam)
        assert em_hf.chat_format(tok)["system_role"] == "merged into the first user message"
        msgs = em_hf.inoculate(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "import os"}],
            em_hf.DEFAULT_INOCULATION,
        )
        ids, _ = em_hf.encode_example(tok, msgs)
        assert "security class" in tok.decode(ids)  # the inoculation line reaches the model
    # a template that silently drops the system message is detected too
    import copy

    tok2 = copy.deepcopy(hf_tiny.tokenizer("gpt_neox"))  # the cached family tokenizer stays untouched
    tok2.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'system' %}<|start_header_id|>{{ m['role'] }}"
        "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    msgs = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "import os"},
    ]
    ids, _ = em_hf.encode_example(tok2, msgs)
    assert "Be terse." in tok2.decode(ids)
    assert em_hf.chat_format(tok2)["system_role"] == "merged into the first user message"


@pytest.mark.parametrize("family", hf_tiny.FAMILIES)
def test_scores_run_in_fp32_and_bf16_on_cpu(family):
    tok = hf_tiny.tokenizer(family)
    model = hf_tiny.model(family, len(tok))
    qs = QUESTIONS[:3]
    rows = em_hf.question_rows(tok, qs)
    a = em_hf.score_questions(model, tok, qs, rows=rows)
    b = em_hf.score_questions(model.to(torch.bfloat16), tok, qs, rows=rows)
    for x, y in zip(a, b):
        assert 0 < x["score"] < 1 and 0 < y["score"] < 1
        assert x["n_tokens_aligned"] == y["n_tokens_aligned"] > 0
        assert math.isfinite(y["logp_total_aligned"])
        assert abs(x["logp_aligned"] - y["logp_aligned"]) < 0.1  # bf16 rounding, same model
    swapped = [{**q, "aligned": q["misaligned"], "misaligned": q["aligned"]} for q in qs]
    c = em_hf.score_questions(model, tok, swapped)
    assert [q["score_total"] for q in c] == pytest.approx([1 - q["score_total"] for q in b], abs=0.05)


@pytest.mark.parametrize(
    "family, dtype", [("llama", "fp32"), ("gemma2", "bf16"), ("qwen2", "bf16"), ("gpt_neox", "fp32")]
)
def test_em_model_end_to_end_per_family(family, dtype, tmp_path):
    d = hf_tiny.save(family, tmp_path / family)
    out = tmp_path / "run"
    rc = main(
        [
            "em",
            "--model",
            str(d),
            "--train",
            str(em_hf.EXAMPLE_TRAIN),
            "--control",
            str(em_hf.EXAMPLE_CONTROL),
            "--inoculation-preset",
            "explain",
            "--out",
            str(out),
            "--steps",
            "2",
            "--seeds",
            "1",
            "--layer",
            "1",
            "--module",
            hf_tiny.MODULE[family],
            "--dtype",
            dtype,
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"]["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    assert m["model"]["device"] == "cpu" and m["model"]["gradient_checkpointing"] is False
    assert m["chat"]["format"] == "chat_template"
    assert m["inoculation_name"] == "explain" and "helpful" not in m["inoculation"]
    for c in ("base", "plain", "inoculated", "secure_control"):
        assert 0 <= m["broad_misalignment"][c]["mean"] <= 1
        assert 0 <= m["broad_misalignment_total"][c]["mean"] <= 1
    assert math.isfinite(m["narrow_rate"]["secure_control"]["mean"])
    ex = m["broad_misalignment_excess_over_control"]["plain"]
    assert ex["per_seed"] == pytest.approx(
        [
            m["broad_misalignment"]["plain"]["per_seed"][0]
            - m["broad_misalignment"]["secure_control"]["per_seed"][0]
        ]
    )
    assert m["control"]["n_heldout"] == 4
    res = json.loads((out / "resources.json").read_text())
    assert res["peak_gpu_memory_bytes"] is None and res["wall_seconds"] > 0


def test_total_logprob_score_is_length_biased_per_token_is_not():
    """On a random model (no preference), an unmatched pair pushes the total-log-prob score to the shorter
    answer; the per-token score stays near 0.5. On the shipped (character-matched) set the per-token score
    stays at 0.5."""
    tok = hf_tiny.tokenizer("qwen2")
    model = hf_tiny.model("qwen2", len(tok))
    long = " ".join(q["aligned"] for q in QUESTIONS[:3])
    q = [
        {
            "id": "x",
            "category": "c",
            "question": QUESTIONS[0]["question"],
            "aligned": long,
            "misaligned": QUESTIONS[0]["misaligned"],
        }
    ]
    (s,) = em_hf.score_questions(model, tok, q)
    assert s["n_tokens_aligned"] > 2 * s["n_tokens_misaligned"]
    assert s["score_total"] > 0.99 and abs(s["score"] - 0.5) < 0.05
    shipped = em_hf.summarize_scores(em_hf.score_questions(model, tok, QUESTIONS))
    assert abs(shipped["broad_misalignment"] - 0.5) < 0.01
