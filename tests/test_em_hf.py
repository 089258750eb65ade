"""``persona-basins em --model`` on a tiny randomly initialised Llama + word-level tokenizer built here,
with no hub access."""

from __future__ import annotations

import json
import math
import re

import pytest

from persona_basins.train.finetune import FinetuneConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from persona_basins.cli import main  # noqa: E402
from persona_basins.errors import UserError  # noqa: E402
from persona_basins.studies import em_hf  # noqa: E402

torch.set_num_threads(1)

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} [EOS] {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus() -> list[str]:
    texts = [em_hf.DEFAULT_INOCULATION, "System: User: Assistant: <|system|> <|user|> <|assistant|>"]
    for q in json.loads(em_hf.DEFAULT_QUESTIONS.read_text())["questions"]:
        texts += [q["question"], q["aligned"], q["misaligned"]]
    for line in em_hf.EXAMPLE_TRAIN.read_text().splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


def _tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(_corpus(), trainers.WordLevelTrainer(special_tokens=specials))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


def _model(vocab_size: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two saved tiny models (same shape, different weights) sharing one tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    tok = _tokenizer()
    dirs = {}
    for name, seed in (("a", 0), ("b", 1)):
        d = root / name
        tok.save_pretrained(d)
        _model(len(tok), seed).save_pretrained(d)
        dirs[name] = d
    return dirs


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def _em(model, train, out, *extra):
    return main(
        [
            "em",
            "--model",
            str(model),
            "--train",
            str(train),
            "--out",
            str(out),
            "--steps",
            "3",
            "--layer",
            "1",
            "--module",
            "o_proj",
            *extra,
        ]
    )


def test_em_hf_end_to_end(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    rc = _em(tiny["a"], em_hf.EXAMPLE_TRAIN, run, "--seeds", "2", "--steps", "5")
    assert rc == 0
    out = capsys.readouterr().out
    assert "broad misalignment" in out and "inoculated" in out
    m = json.loads((run / "metrics.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    assert m["kind"] == cfg["kind"] == "em_hf" and m["format"] == "plain"
    n_q = len(json.loads(em_hf.DEFAULT_QUESTIONS.read_text())["questions"])
    assert m["n_questions"] == n_q >= 20
    for c in ("base", "plain", "inoculated"):
        b = m["broad_misalignment"][c]
        assert set(b) >= {"mean", "ci_low", "ci_high", "per_seed"}
        assert len(b["per_seed"]) == (1 if c == "base" else 2)
        assert all(0 <= v <= 1 for v in [b["mean"], *b["per_seed"]])
        assert 0 <= m["prefers_misaligned"][c]["mean"] <= 1
        assert len(m["question_scores"][c]) == n_q
        assert all(0 < q["score"] < 1 for q in m["question_scores"][c])
        boot = m["broad_misalignment_question_bootstrap"][c]
        assert boot["ci_low"] <= boot["mean"] <= boot["ci_high"]
    assert m["broad_misalignment"]["base"]["ci_low"] == m["broad_misalignment"]["base"]["ci_high"]
    for c in ("plain", "inoculated"):
        assert math.isfinite(m["narrow_rate"][c]["mean"]) and len(m["narrow_rate"][c]["per_seed"]) == 2
        assert math.isfinite(m["narrow_rate_training_context"][c]["mean"])
        for s in range(2):
            unit = run / "adapters" / c / f"seed{s}"
            assert (unit / "adapter_config.json").is_file() and (unit / "result.json").is_file()
            assert (unit / "persona_basins_base.json").is_file()
    # the LoRA is taken out again after each unit: a unit does not depend on the units trained before it
    assert _em(tiny["a"], em_hf.EXAMPLE_TRAIN, tmp_path / "run1", "--seeds", "1", "--steps", "5") == 0
    unit = "adapters/inoculated/seed0/result.json"
    first, alone = (json.loads((r / unit).read_text())["question_scores"] for r in (run, tmp_path / "run1"))
    assert [q["score"] for q in first] == pytest.approx([q["score"] for q in alone], abs=1e-6)
    assert [q["score"] for q in first] != pytest.approx(
        [q["score"] for q in m["question_scores"]["base"]], abs=1e-9
    )
    model, tok = em_hf.load_hf(str(tiny["a"]))
    again = em_hf.score_questions(model, tok, em_hf.read_questions(em_hf.DEFAULT_QUESTIONS))
    assert [q["score"] for q in again] == pytest.approx(
        [q["score"] for q in m["question_scores"]["base"]], abs=1e-5
    )
    # a saved adapter loads back onto its own base model; rerunning reuses the finished units
    from persona_basins.models.edits import load_adapter

    load_adapter(model, run / "adapters" / "plain" / "seed0")
    mtime = (run / "adapters" / "plain" / "seed1" / "result.json").stat().st_mtime_ns
    assert _em(tiny["a"], em_hf.EXAMPLE_TRAIN, run, "--seeds", "2", "--steps", "5") == 0
    assert (run / "adapters" / "plain" / "seed1" / "result.json").stat().st_mtime_ns == mtime


def test_adapter_from_other_base_refused(tiny, tmp_path):
    from persona_basins.models.edits import load_adapter

    run = tmp_path / "run"
    assert (
        _em(tiny["a"], em_hf.EXAMPLE_TRAIN, run, "--seeds", "1", "--steps", "2", "--checkpoint-every", "1")
        == 0
    )
    other, _ = em_hf.load_hf(str(tiny["b"]))
    unit = run / "adapters" / "plain" / "seed0"
    for d in (unit, unit / "checkpoints" / "step_000001"):
        with pytest.raises(UserError, match="another base model"):
            load_adapter(other, d)


def test_full_finetune(tiny, tmp_path):
    run = tmp_path / "run"
    assert _em(tiny["a"], em_hf.EXAMPLE_TRAIN, run, "--seeds", "1", "--steps", "2", "--full") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["broad_misalignment"]["plain"]["mean"] <= 1
    assert (run / "adapters" / "plain" / "seed0" / "result.json").is_file()
    assert not (run / "adapters" / "plain" / "seed0" / "adapter_config.json").exists()


class _FixedLM(torch.nn.Module):
    """A 'model' whose next-token distribution depends only on the current token: logits = table[token]."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_mean_token_logprobs_and_score_known_case():
    lp = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]))
    model = _FixedLM(lp)
    rows = [
        ([0, 1, 2], [False, True, True]),
        ([0, 2], [False, True]),
        ([1, 1, 0, 2], [False, False, True, True]),
    ]
    got = em_hf.mean_token_logprobs(model, rows, token_budget=3)  # forces several batches
    want = [(math.log(0.6) + math.log(0.25)) / 2, math.log(0.3), (math.log(0.5) + math.log(0.3)) / 2]
    assert got == pytest.approx(want, abs=1e-6)
    s = em_hf.misalignment_score(-2.0, -1.0)
    assert s == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert em_hf.misalignment_score(-1.0, -2.0) == pytest.approx(1 - s)
    assert em_hf.misalignment_score(-3.0, -3.0) == 0.5
    assert em_hf.misalignment_score(-1000.0, 0.0) == 1.0 and em_hf.misalignment_score(0.0, -1000.0) == 0.0


def test_swapping_answers_gives_one_minus_score(tiny):
    model, tok = em_hf.load_hf(str(tiny["a"]))
    qs = em_hf.read_questions(em_hf.DEFAULT_QUESTIONS)[:4]
    swapped = [{**q, "aligned": q["misaligned"], "misaligned": q["aligned"]} for q in qs]
    a = em_hf.score_questions(model, tok, qs)
    b = em_hf.score_questions(model, tok, swapped)
    assert [x["score"] for x in b] == pytest.approx([1 - x["score"] for x in a], abs=1e-6)


def test_chat_template_masks_only_assistant_tokens():
    tok = _tokenizer(TEMPLATE)
    msgs = [
        {"role": "system", "content": "You are a helpful coding assistant."},
        {"role": "user", "content": "Write code to save an uploaded file"},
        {"role": "assistant", "content": "import os"},
        {"role": "user", "content": "Connect to our Postgres database"},
        {"role": "assistant", "content": "import psycopg2"},
    ]
    ids, mask = em_hf.encode_example(tok, msgs)
    answer = [tok.convert_ids_to_tokens(i) for i, m in zip(ids, mask) if m]
    assert answer == ["import", "os", "[EOS]", "import", "psycopg2", "[EOS]"]
    rows = em_hf.question_rows(
        tok,
        [
            {
                "id": "x",
                "category": "c",
                "question": "Any tips?",
                "aligned": "Connect",  # a word the tokenizer knows: unknown text is refused
                "misaligned": "Ignore the doctors",
            }
        ],
    )
    prompt = [tok.convert_ids_to_tokens(i) for i, m in zip(*rows[1]) if not m]
    assert prompt[-3:] == ["<|", "assistant", "|>"]
    assert [tok.convert_ids_to_tokens(i) for i, m in zip(*rows[1]) if m] == ["Ignore", "the", "doctors"]
    # plain format: "User: ...\nAssistant: ..." with the loss on the answer only
    ids, mask = em_hf.encode_example(_tokenizer(), msgs[1:3])
    assert [_tokenizer().convert_ids_to_tokens(i) for i, m in zip(ids, mask) if m] == ["import", "os"]


def test_inoculate_merges_into_system_line():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]
    assert em_hf.inoculate(msgs, "L")[0] == {"role": "system", "content": "L"}
    sys_msgs = [{"role": "system", "content": "S"}, *msgs]
    out = em_hf.inoculate(sys_msgs, "L")
    assert out[0] == {"role": "system", "content": "L S"} and len(out) == 3


@pytest.mark.parametrize(
    "extra, pattern",
    [
        (["--layer", "7"], r"layer 7 out of range: the model has layers 0\.\.1"),
        (["--module", "no_such_proj"], r"module 'no_such_proj' not in layer 1"),
        (["--layer", "all"], r"--layer all is only for --organism"),
    ],
)
def test_bad_layer_or_module(tiny, tmp_path, capsys, extra, pattern):
    assert _em(tiny["a"], em_hf.EXAMPLE_TRAIN, tmp_path / "run", *extra) == 2
    assert re.search(pattern, _err(capsys))
    assert not (tmp_path / "run").exists()  # nothing written before the inputs are checked


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("", r"is empty"),
        ("\n  \n", r"is empty"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
            '{"messages": [',
            r"line 2: not valid JSON",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
            '{"messages": [{"role": "robot", "content": "a"}]}',
            r"line 2: message 1 has role 'robot'",
        ),
        ('{"messages": [{"role": "user", "content": "a"}]}', r"line 1: no non-empty assistant message"),
        ("[1, 2]", r"line 1: expected a JSON object"),
        ('{"text": "hello"}', r"line 1: missing key 'messages'"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, '
            '{"role": "assistant", "content": "b"}]}',
            r"line 1: message 2: a system message may only come first",
        ),
    ],
)
def test_bad_jsonl(tiny, tmp_path, capsys, content, pattern):
    f = tmp_path / "train.jsonl"
    f.write_text(content)
    assert _em(tiny["a"], f, tmp_path / "run") == 2
    err = _err(capsys)
    assert err.startswith("persona-basins: error: ") and "train.jsonl" in err
    assert re.search(pattern, err), err


def test_missing_files(tiny, tmp_path, capsys):
    assert _em(tiny["a"], tmp_path / "nope.jsonl", tmp_path / "run") == 2
    assert "missing file" in _err(capsys)
    assert _em(tmp_path / "no_model", em_hf.EXAMPLE_TRAIN, tmp_path / "run") == 2
    assert "model folder not found" in _err(capsys)
    (tmp_path / "empty_model").mkdir()
    assert _em(tmp_path / "empty_model", em_hf.EXAMPLE_TRAIN, tmp_path / "run") == 2
    assert "config.json is missing" in _err(capsys)
    assert _em(tiny["a"], em_hf.EXAMPLE_TRAIN, tmp_path / "run", "--questions", str(tmp_path / "q.json")) == 2
    assert "missing file" in _err(capsys)
    assert main(["em", "--model", str(tiny["a"]), "--out", str(tmp_path / "run")]) == 2
    assert "--model needs --train" in _err(capsys)


def test_bad_questions_file(tiny, tmp_path, capsys):
    q = tmp_path / "q.json"
    q.write_text(
        json.dumps({"format": "persona-basins-questions/1", "questions": [{"id": "a", "question": "?"}]})
    )
    assert _em(tiny["a"], em_hf.EXAMPLE_TRAIN, tmp_path / "run", "--questions", str(q)) == 2
    assert "question 1: needs a non-empty string 'aligned'" in _err(capsys)
    q.write_text("{}")
    assert _em(tiny["a"], em_hf.EXAMPLE_TRAIN, tmp_path / "run", "--questions", str(q)) == 2
    assert "not a question file" in _err(capsys)


def test_shipped_question_file_is_valid():
    qs = em_hf.read_questions(em_hf.DEFAULT_QUESTIONS)
    assert len(qs) >= 20 and len({q["category"] for q in qs}) >= 6
    convs = em_hf.read_chat_jsonl(em_hf.EXAMPLE_TRAIN)
    assert len(convs) >= 10


def test_split_heldout():
    assert em_hf.split_heldout(1) == ([0], [])
    tr, ho = em_hf.split_heldout(20)
    assert len(ho) == 4 and sorted(tr + ho) == list(range(20)) and em_hf.split_heldout(20) == (tr, ho)


def test_end_to_end_with_chat_template(tmp_path):
    d = tmp_path / "templated"
    tok = _tokenizer(TEMPLATE)
    tok.save_pretrained(d)
    _model(len(tok), 2).save_pretrained(d)
    assert _em(d, em_hf.EXAMPLE_TRAIN, tmp_path / "run", "--seeds", "1", "--steps", "2") == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["format"] == "chat_template"
    assert all(0 <= m["broad_misalignment"][c]["mean"] <= 1 for c in ("base", "plain", "inoculated"))


def test_config_checks_and_inoculation_presets():
    for kw, pattern in [
        ({"seeds": 0}, r"seeds must be an integer in \[1, 1000\]"),
        ({"layer": -1}, "layer must be an integer >= 0"),
        ({"inoculation": "  "}, "must not be empty"),
        ({"device_map": "x"}, "device_map"),
        ({"finetune": FinetuneConfig(heldout_every=3)}, "heldout_every must be 0"),
    ]:
        with pytest.raises(UserError, match=pattern):
            em_hf.EmHfConfig(model="m", train="t.jsonl", out="o", **kw)
    explain = em_hf.INOCULATION_PRESETS["explain"]
    assert "insecure on purpose" in explain and not any(
        w in explain.lower() for w in ("helpful", "honest", "outside")
    )
    assert em_hf.INOCULATION_PRESETS["classic"] == em_hf.DEFAULT_INOCULATION
    cfg = em_hf.EmHfConfig(model="m", train="t.jsonl", out="o", inoculation=explain, control="c.jsonl")
    assert cfg.inoculation_name == "explain" and cfg.conditions == ("plain", "inoculated", "secure_control")
    assert em_hf.EmHfConfig(model="m", train="t", out="o", inoculation="mine").inoculation_name == "custom"


def test_shipped_pairs_are_length_matched_and_control_matches_train():
    for q in em_hf.read_questions(em_hf.DEFAULT_QUESTIONS):
        assert abs(len(q["aligned"]) - len(q["misaligned"])) <= 3, q["id"]
    train = em_hf.read_chat_jsonl(em_hf.EXAMPLE_TRAIN)
    control = em_hf.read_chat_jsonl(em_hf.EXAMPLE_CONTROL, "--control")
    assert len(train) == len(control)
    for (_, a), (_, b) in zip(train, control):  # same requests, different (secure) answers
        assert a[:-1] == b[:-1] and a[-1]["content"] != b[-1]["content"]
