#!/usr/bin/env bash
# GPU smoke test of the Hugging Face path (no downloads): a random ~100M-parameter Llama in bf16 is built here
# (tokenizer trained locally, Llama-3-style chat template), then
#   1. em --model: 2 seeds x 30 steps for plain, inoculated and the secure-code control (LoRA rank 1, layer 6),
#   2. llc on the plain seed-0 adapter (2 chains x 50 draws),
#   3. a basin scan along the adapter direction: broad misalignment of w0 + t*dW for t in 0..4,
#   4. the agreement check on ground truth, in fp32 and in bf16: the tiny organism exported as a chat model, em --model
#      on it (5 seeds x 300 steps), every adapter read by the organism's exact readout (scripts/em_hf_agreement.py;
#      the JSON of each lands in OUT/agreement-<dtype>.json),
# and writes the wall time and peak GPU memory of each step to OUT/gpu_smoke.json (after every step, so a killed
# run keeps what it finished). A step that fails is recorded with its error; the others still run.
#
#   scripts/gpu_smoke.sh [OUT]            # OUT defaults to $OUT (the device machine's return folder) or runs/gpu-smoke
#   SMOKE_SIZE=tiny scripts/gpu_smoke.sh  # a 2-layer model and 3 steps: a dry run of the script itself on a CPU
#
# Meant to finish in well under 10 minutes on one recent GPU; the whole script is bounded by SMOKE_TIMEOUT seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-runs/gpu-smoke}}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
timeout "${SMOKE_TIMEOUT:-560}" "$PY" - "$OUT_DIR" "${SMOKE_SIZE:-100m}" <<'PYEOF'
import json, sys, time, traceback
from pathlib import Path

import torch

sys.path.insert(0, "tests")
out, size = Path(sys.argv[1]).resolve(), sys.argv[2]
cuda = torch.cuda.is_available()
report = {"size": size, "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
          "steps": {}}
try:
    import transformers
    report["transformers"] = transformers.__version__
except ImportError:
    pass


def save():
    tmp = out / "gpu_smoke.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "gpu_smoke.json")


def step(name):
    def wrap(fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        rec = {"ok": False}
        try:
            rec["result"] = fn()
            rec["ok"] = True
        except BaseException as e:  # noqa: BLE001 - a smoke test records every failure and goes on
            rec["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
            rec["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
        if cuda:
            torch.cuda.synchronize()
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        rec["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated()) if cuda else None
        report["steps"][name] = rec
        save()
        print(f"[gpu_smoke] {name}: {'ok' if rec['ok'] else 'FAILED ' + rec['error']} in {rec['seconds']} s", flush=True)
        return rec
    return wrap


model_dir = out / "model"
tiny = size == "tiny"
steps, layer = ("3", "1") if tiny else ("30", "6")


@step("build_model")
def _():
    import hf_tiny
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = hf_tiny.tokenizer("gpt_neox")  # byte-level BPE trained on the shipped texts, Llama-3-style template
    dims = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=len(tok)) if tiny else
            dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=16384))
    torch.manual_seed(0)
    cfg = LlamaConfig(**dims, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    return {"parameters": sum(p.numel() for p in model.parameters()), "dtype": "bfloat16", **dims}


@step("em_model")
def _():
    from persona_basins.cli import main
    from persona_basins.studies import em_hf

    rc = main(["em", "--model", str(model_dir), "--train", str(em_hf.EXAMPLE_TRAIN), "--control",
               str(em_hf.EXAMPLE_CONTROL), "--seeds", "2", "--steps", steps, "--layer", layer, "--module", "o_proj",
               "--lr", "1e-3", "--out", str(out / "em")])
    if rc != 0:
        raise RuntimeError(f"em exited {rc}")
    m = json.loads((out / "em" / "metrics.json").read_text())
    return {"model": m["model"], "chat": m["chat"]["format"], "answer_lengths": m["answer_lengths"],
            "resources": json.loads((out / "em" / "resources.json").read_text()),
            **{k: {c: v["mean"] for c, v in m[k].items()}
               for k in ("broad_misalignment", "broad_misalignment_total", "narrow_rate")}}


@step("llc_adapter")
def _():
    from persona_basins.cli import main
    from persona_basins.studies import em_hf

    data = out / "llc_data.txt"
    lines = [m["content"].replace("\n", " ") for _, msgs in em_hf.read_chat_jsonl(em_hf.EXAMPLE_TRAIN) for m in msgs]
    data.write_text("\n".join(lines) + "\n")
    rc = main(["llc", "--model", str(model_dir), "--adapter", str(out / "em" / "adapters" / "plain" / "seed0"),
               "--data", str(data), "--out", str(out / "llc"), "--chains", "2", "--draws", "50", "--burnin", "10",
               "--n-docs", "64", "--seq-len", "64", "--batch-size", "8"])
    if rc != 0:
        raise RuntimeError(f"llc exited {rc}")
    m = json.loads((out / "llc" / "metrics.json").read_text())
    return {"llc": m.get("llc"), "diagnostics": {k: v for k, v in (m.get("diagnostics") or {}).items()
                                                 if isinstance(v, (int, float, str, type(None)))}}


@step("basin_scan")
def _():
    from persona_basins.models.edits import edited, load_adapter, lora_b_path
    from persona_basins.models.hf import load_causal_lm
    from persona_basins.studies import em_hf

    model, tok = load_causal_lm(model_dir)  # auto: cuda + bf16 where supported
    peft = load_adapter(model, out / "em" / "adapters" / "plain" / "seed0")
    origin, delta = lora_b_path(peft)
    qs = em_hf.read_questions(em_hf.DEFAULT_QUESTIONS)
    rows = em_hf.question_rows(tok, qs)
    ts = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
    curve = []
    for t in ts:
        with edited(peft, delta, t, origin=origin):
            s = em_hf.summarize_scores(em_hf.score_questions(peft, tok, qs, rows=rows))
        curve.append({"t": t, **s})
    return {"direction": "plain adapter seed 0 (lora_B scaled by t: w0 + t*dW)", "curve": curve}


def _agreement(dtype):
    """em --model on the tiny organism exported as a chat model, each adapter read by the exact organism
    readout (scripts/em_hf_agreement.py): proves the CUDA path and the scorer against ground truth."""
    from persona_basins.models.organism import preset_config
    from persona_basins.studies.em_hf_agreement import run_agreement
    from persona_basins.studies.organism import build_organism

    org = build_organism(preset_config("tiny", seed=0), out / "organism", progress=False, log=lambda *_: None)
    seeds, ft_steps = (2, 60) if tiny else (5, 300)
    res = run_agreement(org, out / f"agreement-{dtype}", seeds=seeds, steps=ft_steps, dtype=dtype,
                        organism_path=False, out_json=out / f"agreement-{dtype}.json")
    return {k: res[k] for k in ("device", "dtype", "seeds", "steps", "spearman", "agreement", "by_condition",
                                "plain_above_secure", "pair_check_max_abs", "meets_targets")}


for _dtype in ("fp32", "bf16"):
    step(f"em_hf_agreement_{_dtype}")(lambda _dtype=_dtype: _agreement(_dtype))


report["total_seconds"] = round(sum(s["seconds"] for s in report["steps"].values()), 2)
report["all_ok"] = all(s["ok"] for s in report["steps"].values())
save()
print(json.dumps({k: report[k] for k in ("device", "total_seconds", "all_ok")}))
PYEOF
