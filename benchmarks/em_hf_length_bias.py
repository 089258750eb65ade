"""Length bias of the judge-free contrastive score, measured both ways on tiny random models (no downloads).

For each tiny model family of tests/hf_tiny.py (tokenizer trained locally, random weights, 3 model seeds) and
each question file given (default: the shipped, length-matched set), the base model's broad misalignment with

- per-token normalisation (the headline score: mean log-prob per answer token), and
- total log-probability (unnormalised; fair only when the two answers have the same number of tokens), over
  all pairs and over the pairs whose answers have exactly the same number of tokens under that tokenizer,

beside the answers' token counts. A random model has no preference between the answers, so any departure from
0.5 is bias. Writes benchmarks/results/em_hf_length_bias.json.

    .venv/bin/python benchmarks/em_hf_length_bias.py [QUESTIONS.json ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str]) -> dict:
    import hf_tiny
    import torch

    from persona_basins.results import write_json
    from persona_basins.studies import em_hf
    from persona_basins.studies.em_hf.scoring import length_report

    torch.set_num_threads(1)
    files = [Path(a) for a in argv] or [em_hf.DEFAULT_QUESTIONS]
    out: dict = {"what": __doc__.split("\n\n")[0], "model_seeds": [0, 1, 2], "files": {}}
    for f in files:
        qs = em_hf.read_questions(f)
        chars = [len(q["misaligned"]) - len(q["aligned"]) for q in qs]
        rec = {
            "n_questions": len(qs),
            "mean_chars_aligned": sum(len(q["aligned"]) for q in qs) / len(qs),
            "mean_chars_misaligned": sum(len(q["misaligned"]) for q in qs) / len(qs),
            "max_abs_char_difference": max(abs(c) for c in chars),
            "families": {},
        }
        for fam in hf_tiny.FAMILIES:
            tok = hf_tiny.tokenizer(fam)
            rows = em_hf.question_rows(tok, qs)
            per_seed = []
            for seed in (0, 1, 2):
                scores = em_hf.score_questions(hf_tiny.model(fam, len(tok), seed), tok, qs, rows=rows)
                s = em_hf.summarize_scores(scores)
                per_seed.append(
                    {
                        "per_token": s["broad_misalignment"],
                        "total": s["broad_misalignment_total"],
                        "total_token_matched": s["broad_misalignment_total_token_matched"],
                        "n_token_matched_pairs": s["n_token_matched_pairs"],
                    }
                )
            rec["families"][fam] = {
                "vocab": len(tok),
                "answer_tokens": length_report(scores),
                "per_seed": per_seed,
                "per_token_mean": sum(p["per_token"] for p in per_seed) / 3,
                "total_mean": sum(p["total"] for p in per_seed) / 3,
            }
        out["files"][str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f.name)] = rec
    write_json(ROOT / "benchmarks" / "results" / "em_hf_length_bias.json", out)
    return out


if __name__ == "__main__":
    res = main(sys.argv[1:])
    for f, rec in res["files"].items():
        print(
            f, f"chars aligned {rec['mean_chars_aligned']:.1f} misaligned {rec['mean_chars_misaligned']:.1f}"
        )
        for fam, r in rec["families"].items():
            t = r["answer_tokens"]
            seeds = ", ".join("{per_token:.3f}/{total:.3f}".format(**p) for p in r["per_seed"])
            tm = [p["total_token_matched"] for p in r["per_seed"]]
            seeds += f"; token-matched pairs: {r['per_seed'][0]['n_token_matched_pairs']}, total score " + (
                ", ".join(f"{x:.3f}" for x in tm) if tm[0] is not None else "-"
            )
            print(
                f"  {fam:<9} tokens A {t['mean_tokens_aligned']:.1f} M {t['mean_tokens_misaligned']:.1f} "
                f"| per-token {r['per_token_mean']:.3f}  total {r['total_mean']:.3f}  (seeds: {seeds})"
            )
