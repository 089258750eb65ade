"""models/hf.py: one loader for HF causal LMs (safetensors only, device and dtype logic). No downloads."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_tiny  # noqa: E402

from persona_basins.cli import main  # noqa: E402
from persona_basins.errors import UserError  # noqa: E402
from persona_basins.models import hf  # noqa: E402

torch.set_num_threads(1)
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return hf_tiny.save("qwen2", tmp_path_factory.mktemp("m") / "qwen2")


def test_load_defaults_on_cpu(folder, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, tok = hf.load_causal_lm(folder)
    p = next(model.parameters())
    assert p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad and not model.training
    assert tok.is_fast and hf.input_device(model).type == "cpu"
    model, _ = hf.load_causal_lm(str(folder), device="cpu", dtype="bf16", requires_grad=True, tokenizer=False)
    p = next(model.parameters())
    assert p.dtype == torch.bfloat16 and p.requires_grad
    assert hf.param_bytes(model) == 2 * hf.param_count(model)


def test_device_and_dtype_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert hf.resolve_dtype("auto", cpu) == torch.float32
    assert hf.resolve_dtype("bf16", cpu) == torch.bfloat16 and hf.resolve_dtype("fp16", cpu) == torch.float16
    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        hf.resolve_dtype("fp8", cpu)
    with pytest.raises(UserError, match="unknown device"):
        hf.resolve_device("tpu:0")
    # pretend there is a GPU: auto picks it, and bf16 only where the GPU supports it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hf.resolve_device("auto").type == "cuda"
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hf.resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hf.resolve_dtype("auto", cuda) == torch.float32
    with pytest.raises(UserError, match="bf16 is not supported on cuda"):
        hf.resolve_dtype("bf16", cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="only 1 CUDA device"):
        hf.resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hf.resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="no CUDA GPU is available"):
        hf.resolve_device("cuda")


def test_device_map_needs_accelerate(folder, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    with pytest.raises(UserError, match="needs the optional package accelerate"):
        hf.load_causal_lm(folder, device="cpu", device_map="auto")
    with pytest.raises(UserError, match="unknown device_map"):
        hf.load_causal_lm(folder, device="cpu", device_map="balanced")


def test_device_map_auto_loads_when_accelerate_is_there(folder):
    pytest.importorskip("accelerate")
    model, _ = hf.load_causal_lm(folder, device_map="auto", dtype="fp32")
    assert hf.input_device(model).type in ("cpu", "cuda")


def _copy(folder, dst):
    import shutil

    shutil.copytree(folder, dst)
    return dst


def test_refuses_pickle_and_corrupt_weights(folder, tmp_path):
    pick = _copy(folder, tmp_path / "pickle")
    (pick / "model.safetensors").unlink()
    (pick / "pytorch_model.bin").write_bytes(b"\x80\x04 never unpickled")
    with pytest.raises(
        UserError,
        match=r"holds only pickle weights \(pytorch_model.bin\); persona-basins never "
        r"unpickles",
    ):
        hf.load_causal_lm(pick, device="cpu")
    bad = _copy(folder, tmp_path / "truncated")
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(UserError, match=r"corrupt safetensors file .*model.safetensors"):
        hf.load_causal_lm(bad, device="cpu")
    shard = _copy(folder, tmp_path / "sharded")
    (shard / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00002.safetensors"}})
    )
    with pytest.raises(UserError, match="shard.*missing: model-00002.safetensors"):
        hf.load_causal_lm(shard, device="cpu")
    with pytest.raises(UserError, match="model folder not found"):
        hf.load_causal_lm(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json is missing"):
        hf.load_causal_lm(tmp_path / "empty")


def test_cli_device_errors_are_one_line(folder, tmp_path, capsys, monkeypatch):
    from persona_basins.studies import em_hf

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [
        "em",
        "--model",
        str(folder),
        "--train",
        str(em_hf.EXAMPLE_TRAIN),
        "--out",
        str(tmp_path / "r"),
        "--layer",
        "1",
        "--module",
        "o_proj",
        "--steps",
        "1",
        "--seeds",
        "1",
    ]
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU is available" in err and "\n" not in err
    assert main([*args, "--full", "--device-map", "auto"]) == 2
    assert "--device-map must be None with a full fine-tune" in capsys.readouterr().err
    assert main([*args, "--inoculation", "x", "--inoculation-preset", "explain"]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_full_finetune_restores_the_base_exactly_and_refuses_big_models(folder, monkeypatch):
    from persona_basins.studies.em_hf import run as em_run

    model, _ = hf.load_causal_lm(folder, device="cpu", dtype="fp32")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    full = em_run._FullFinetune(model)
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    full.restore()
    assert all(torch.equal(p, before[n]) and not p.requires_grad for n, p in model.named_parameters())
    # on a GPU too small for weights + grads + 2 AdamW moments, --full is refused with the numbers
    em_run.check_full_fits(model, torch.device("cpu"))  # no check on CPU
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": 1000})()
    )
    wanted = r"FinetuneConfig.full must be False for this 0\.00B-parameter model: a full fine-tune needs"
    with pytest.raises(UserError, match=wanted):
        em_run.check_full_fits(model, torch.device("cuda"))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_bf16_scoring_matches_cpu(folder):
    from persona_basins.studies import em_hf

    qs = em_hf.read_questions(em_hf.DEFAULT_QUESTIONS)[:4]
    m_gpu, tok = hf.load_causal_lm(folder, device="cuda", dtype="auto")
    assert hf.input_device(m_gpu).type == "cuda"
    m_cpu, _ = hf.load_causal_lm(folder, device="cpu", dtype="fp32")
    a = em_hf.score_questions(m_cpu, tok, qs)
    b = em_hf.score_questions(m_gpu, tok, qs)
    assert [x["logp_aligned"] for x in b] == pytest.approx([x["logp_aligned"] for x in a], abs=0.1)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_em_run_with_gradient_checkpointing(folder, tmp_path):
    from persona_basins.studies import em_hf

    out = tmp_path / "run"
    assert (
        main(
            [
                "em",
                "--model",
                str(folder),
                "--train",
                str(em_hf.EXAMPLE_TRAIN),
                "--out",
                str(out),
                "--layer",
                "1",
                "--module",
                "o_proj",
                "--steps",
                "3",
                "--seeds",
                "1",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"]["device"].startswith("cuda") and m["model"]["gradient_checkpointing"] is True
    assert json.loads((out / "resources.json").read_text())["peak_gpu_memory_bytes"] > 0


def test_gradient_checkpointing_runs_on_cpu_and_changes_no_number(folder, tmp_path):
    from persona_basins.studies import em_hf

    runs = {}
    for flag in ("--gradient-checkpointing", "--no-gradient-checkpointing"):
        out = tmp_path / flag.strip("-")
        assert (
            main(
                [
                    "em",
                    "--model",
                    str(folder),
                    "--train",
                    str(em_hf.EXAMPLE_TRAIN),
                    "--out",
                    str(out),
                    "--layer",
                    "1",
                    "--module",
                    "o_proj",
                    "--steps",
                    "3",
                    "--seeds",
                    "1",
                    "--device",
                    "cpu",
                    flag,
                ]
            )
            == 0
        )
        runs[flag] = json.loads((out / "metrics.json").read_text())
    on, off = runs["--gradient-checkpointing"], runs["--no-gradient-checkpointing"]
    assert on["model"]["gradient_checkpointing"] is True and off["model"]["gradient_checkpointing"] is False
    for c in ("plain", "inoculated"):
        assert on["broad_misalignment"][c]["per_seed"] == pytest.approx(
            off["broad_misalignment"][c]["per_seed"], abs=1e-6
        )
        assert on["final_loss"][c]["mean"] == pytest.approx(off["final_loss"][c]["mean"], abs=1e-5)
