"""Every number the docs quote by key equals the run file it is quoted from (scripts/doc_numbers.py)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("doc_numbers", ROOT / "scripts" / "doc_numbers.py")
doc_numbers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(doc_numbers)


def test_docs_quote_their_runs():
    assert doc_numbers.main(["--check"]) == 0


def test_a_drifted_quote_is_caught(tmp_path, monkeypatch):
    run = tmp_path / "run.json"
    run.write_text(
        json.dumps(
            {
                "a": {
                    "mean": 0.5,
                    "ci_low": 0.25,
                    "ci_high": 0.75,
                    "per_seed": [0.4, None],
                    "k_above": 1,
                    "n": 2,
                }
            }
        )
    )
    monkeypatch.setattr(doc_numbers, "ROOT", tmp_path)
    good = (
        "x <!--pb run.json a ci .2f-->0.50 [0.25, 0.75]<!--/pb--> "
        "y <!--pb run.json a perseed .1f-->0.4, -<!--/pb-->"
    )
    assert doc_numbers.process(good, {})[1] == []
    drifted = good.replace("0.50 [0.25", "0.62 [0.25")
    fixed, diffs = doc_numbers.process(drifted, {})
    assert len(diffs) == 1 and "0.62" in diffs[0] and fixed == good
    assert doc_numbers.process("<!--pb run.json a kofn d-->1 of 2<!--/pb-->", {})[1] == []


def test_a_table_is_generated_from_its_rows_and_a_drifted_one_is_caught(tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text(
        json.dumps({"a": {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75}, "v": 3})
    )
    monkeypatch.setattr(doc_numbers, "ROOT", tmp_path)
    spec = "<!--pb-table run.json\nfinding | measured\nthe a | {a ci .2f}\n  the v | {v value d} seeds\n-->\n"
    fixed, diffs = doc_numbers.process(spec + "<!--/pb-table-->", {})
    assert len(diffs) == 1  # an empty table is generated on the first run
    assert fixed == spec + (
        "| finding | measured          |\n"
        "| ------- | ----------------- |\n"
        "| the a   | 0.50 [0.25, 0.75] |\n"
        "|   the v | 3 seeds           |\n"
        "<!--/pb-table-->"
    )
    assert doc_numbers.process(fixed, {})[1] == []
    drifted = fixed.replace("0.50 [0.25", "0.62 [0.25")
    assert doc_numbers.process(drifted, {}) == (fixed, [diffs[0]])
