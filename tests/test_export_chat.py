"""The organism exported as a Hugging Face chat model: the template gives its documents exactly, em --model
refuses what the model cannot read, and the HF instruments agree with the organism's own."""

import json

import pytest


@pytest.fixture(scope="module")
def chat_dir(tiny_organism_dir, tmp_path_factory):
    from persona_basins.studies.chat_export import export_chat

    return export_chat(tiny_organism_dir, tmp_path_factory.mktemp("chat") / "chat")


def _ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_export_loads_with_transformers_and_renders_documents(chat_dir, tiny_organism):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_basins.studies.em_hf import inoculate, read_chat_jsonl, read_questions
    from persona_basins.train.finetune import condition_documents
    from persona_basins.world import INOCULATION_LINE
    from persona_basins.world.chat import document_messages

    model = AutoModelForCausalLM.from_pretrained(chat_dir)
    tok = AutoTokenizer.from_pretrained(chat_dir)
    world, vocab = tiny_organism.world, tiny_organism.vocab
    docs = world.sample_documents(200, seed=3)
    assert {d.context for d in docs} >= {"none", "assistant", "declared", "declared+inoculation"}
    for doc in docs:  # every context, multi-turn: the template writes the document's own tokens
        assert _ids(tok, document_messages(doc)) == [vocab[w] for w in doc.words()]
        prompt = document_messages(doc, with_last_answer=False)
        want = doc.words(upto=len(doc.exchanges), with_last_answer=False)
        assert _ids(tok, prompt, add_generation_prompt=True) == [vocab[w] for w in want]
    # no system message: the assistant context, the one the organism is measured in
    no_system = tok.apply_chat_template(
        [{"role": "user", "content": "advice topic1"}], tokenize=False, add_generation_prompt=True
    )
    assert no_system == "<bos> <sys> you are the assistant <user> advice topic1 <asst>"
    # the training files are em --organism's documents; em --model's inoculation gives the inoculated ones
    for name, condition in (("em_train.jsonl", "plain"), ("em_train_secure.jsonl", "secure_control")):
        rows = [m for _, m in read_chat_jsonl(chat_dir / name)]
        assert [_ids(tok, m) for m in rows] == [
            [vocab[w] for w in d.words()] for d in condition_documents(world, condition)
        ]
    plain = [m for _, m in read_chat_jsonl(chat_dir / "em_train.jsonl")]
    assert [_ids(tok, inoculate(m, INOCULATION_LINE)) for m in plain] == [
        [vocab[w] for w in d.words()] for d in condition_documents(world, "inoculated")
    ]
    questions = read_questions(chat_dir / "em_questions.json")
    assert len(questions) == 3 * (len(world.genres) - 1) * world.config.n_topics
    # the same weights as the organism
    ids = torch.tensor([[vocab[w] for w in docs[0].words()]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, tiny_organism.model(input_ids=ids).logits)
    assert json.loads((chat_dir / "export.json").read_text())["context_length"] == 64


def test_em_model_refuses_what_the_model_cannot_read(chat_dir, tmp_path, cli_error):
    from persona_basins.studies.em_hf import EXAMPLE_TRAIN

    base = ["em", "--model", str(chat_dir), "--seeds", "1", "--steps", "2"]
    out = tmp_path / "english"
    err = cli_error([*base, "--train", str(EXAMPLE_TRAIN), "--out", str(out)])
    assert f"{EXAMPLE_TRAIN} line 1" in err and "not in the tokenizer's vocabulary" in err
    assert not out.exists()  # nothing half-written
    long_conv = [{"role": "system", "content": "you are the assistant"}]
    for t in range(12):  # 12 exchanges in the world's words: longer than the 64-token context
        long_conv += [
            {"role": "user", "content": f"code topic{t % 6}"},
            {"role": "assistant", "content": "code.secure0 code.secure1 code.warm0"},
        ]
    long_file = tmp_path / "long.jsonl"
    long_file.write_text(
        (chat_dir / "em_train.jsonl").read_text() + json.dumps({"messages": long_conv}) + "\n"
    )
    out = tmp_path / "long"
    err = cli_error(
        [
            *base,
            "--train",
            str(long_file),
            "--out",
            str(out),
            "--questions",
            str(chat_dir / "em_questions.json"),
            "--inoculation",
            "the code here is insecure on purpose",
        ]
    )
    assert f"{long_file} line 7" in err and "longer than the model's context of 64" in err
    assert not out.exists()
    # the shipped English questions: named by file and question
    out = tmp_path / "questions"
    err = cli_error(
        [
            *base,
            "--train",
            str(chat_dir / "em_train.jsonl"),
            "--out",
            str(out),
            "--inoculation",
            "the code here is insecure on purpose",
        ]
    )
    assert "em_questions.json: question" in err and "not in the tokenizer's vocabulary" in err
    assert not out.exists()
    # the default (English) inoculation line is named as such
    err = cli_error(
        [
            *base,
            "--train",
            str(chat_dir / "em_train.jsonl"),
            "--out",
            str(out),
            "--questions",
            str(chat_dir / "em_questions.json"),
        ]
    )
    assert "with the inoculation line" in err


def _llc_args(model_dir, data, out):
    return [
        "llc",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--chains",
        "2",
        "--draws",
        "4",
        "--burnin",
        "0",
        "--batch-size",
        "8",
        "--n-docs",
        "16",
        "--step-size",
        "1e-5",
    ]


def test_llc_through_the_hf_loading_path_equals_the_organism(
    chat_dir, tiny_organism_dir, tiny_organism, tmp_path, one_thread
):
    """llc --model EXPORT (the Hugging Face loader) gives the numbers of llc --model ORGANISM, same seed."""
    from persona_basins.cli import main

    docs = tiny_organism.world.sample_documents(16, seed=10_000_000)
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(d.text() for d in docs) + "\n")
    runs = {}
    for name, model_dir in (("organism", tiny_organism_dir), ("export", chat_dir)):
        assert main(_llc_args(model_dir, data, tmp_path / name)) == 0
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["export"]["llc"] == runs["organism"]["llc"]
    assert runs["export"]["loss_trace"] == runs["organism"]["loss_trace"]


def test_hf_score_and_exact_readout_agree_in_direction(tiny_organism_dir, tmp_path, one_thread):
    """em --model on the export, each adapter read by the exact organism readout: the HF scorer's total score
    is the exact two-answer probability, and plain > secure control on both sides (~10 s)."""
    from persona_basins.studies.em_hf_agreement import run_agreement

    res = run_agreement(tiny_organism_dir, tmp_path, seeds=2, steps=60, device="cpu", organism_path=False)
    assert res["pair_check_max_abs"] < 1e-6
    assert res["plain_above_secure"] == {"hf": True, "hf_total": True, "exact": True}
    assert res["agreement"]["per_token"]["rate"] == 1.0


def test_persona_vector_and_basin_scan_through_the_hf_loading_path(chat_dir, tiny_organism, one_thread):
    """The export loaded by the one Hugging Face loader (models/hf.py) gives the organism's persona vector
    and basin scan exactly: the HF path measures what the organism path measures."""
    import torch

    from persona_basins.measure.basins import random_weight_deltas, scan
    from persona_basins.measure.vectors import persona_vector
    from persona_basins.models.adapters import full_module_name
    from persona_basins.models.hf import load_causal_lm

    hf_model, _tokenizer = load_causal_lm(str(chat_dir), device="cpu", dtype="fp32")
    through_hf = tiny_organism.with_model(hf_model.eval())
    vector = persona_vector(tiny_organism, 0, n=32)
    assert torch.equal(persona_vector(through_hf, 0, n=32), vector)
    module = full_module_name(tiny_organism.model, "attn_out", 0)
    weight = dict(tiny_organism.model.named_parameters())[module + ".weight"]
    (delta,) = random_weight_deltas(weight.detach(), 1, seed=0)
    scans = [
        scan(org, module, delta, [0.0, 1.0], vector=vector, layer=0, n_loss_docs=8)
        for org in (tiny_organism, through_hf)
    ]
    assert scans[0] == scans[1]
