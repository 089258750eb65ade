"""The one result schema: a real study validates, a broken one names the key, the sample keeps the shapes."""

import json

import pytest

from persona_basins.schema import SCHEMA_FILE, SchemaError, validate_study


def test_real_tiny_demo_study_validates(tiny_demo_run):
    study = json.loads((tiny_demo_run / "study.json").read_text())
    validate_study(study)
    metrics = json.loads((tiny_demo_run / "metrics.json").read_text())
    assert metrics["study"] == "study.json" and metrics["kind"] == "demo"  # a summary, not a second copy
    assert metrics["critical_magnitude"] == study["critical_magnitude"]


def test_a_broken_study_names_the_key(tiny_demo_run):
    study = json.loads((tiny_demo_run / "study.json").read_text())
    missing = {k: v for k, v in study.items() if k != "critical_magnitude"}
    with pytest.raises(SchemaError, match="critical_magnitude"):
        validate_study(missing)
    wrong = json.loads(json.dumps(study))
    wrong["critical_magnitude"]["plain"]["n"] = "five"
    with pytest.raises(SchemaError, match="critical_magnitude/plain/n"):
        validate_study(wrong)


def test_sample_runs_use_the_real_shapes(tmp_path):
    from persona_basins.viz.sample import write_demo_run

    study = json.loads((write_demo_run(tmp_path / "s") / "study.json").read_text())
    validate_study(study, partial=True)
    with pytest.raises(SchemaError):
        validate_study(study)  # partial: the sample lacks sections on purpose (the page must cope)
    assert json.loads(SCHEMA_FILE.read_text())["$id"] == "persona-basins-study/1"
