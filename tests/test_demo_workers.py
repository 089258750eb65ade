"""The demo's units on a process pool (``--workers``): the same numbers as one worker, byte for byte, and
a queue that stops its workers when interrupted."""

import json

import pytest

from persona_basins.cli import main
from persona_basins.results import split_timing

STEPS = ("em", "scans", "llc", "overlap", "eigenform")


def _without_timing(path) -> str:
    """The JSON file as written, wall-clock fields dropped (key order kept: compared as text)."""
    return json.dumps(split_timing(json.loads(path.read_text()))[0])


def test_two_workers_give_the_numbers_of_one(tiny_organism_dir, tiny_demo_run, tmp_path, capsys):
    assert json.loads((tiny_demo_run / "config.json").read_text())["environment"]["workers"] == 1
    out = tmp_path / "pooled"
    argv = ["demo", "--preset", "tiny", "--organism", str(tiny_organism_dir), "--out", str(out)]
    assert main([*argv, "--no-browser", "--no-calibrated-llc", "--workers", "2"]) == 0
    assert "tiny is a smoke test" in capsys.readouterr().out  # the summary says what tiny cannot show
    assert json.loads((out / "config.json").read_text())["environment"]["workers"] == 2
    assert _without_timing(out / "study.json") == _without_timing(tiny_demo_run / "study.json")
    for step in STEPS:
        result = f"steps/{step}/result.json"
        assert _without_timing(out / result) == _without_timing(tiny_demo_run / result), step
    for unit in (tiny_demo_run / "em" / "adapters").glob("*/seed*/result.json"):
        ours = out / unit.relative_to(tiny_demo_run)
        assert _without_timing(ours) == _without_timing(unit), unit


def test_help_states_the_time_and_that_tiny_is_a_smoke_test(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--workers N" in text and "the numbers do not depend on it" in text
    assert "tiny is a smoke test" in text and "too small to show any finding" in text
    assert "default about" in text and "minutes" in text


def test_workers_must_be_positive(tmp_path, capsys):
    assert main(["demo", "--preset", "tiny", "--out", str(tmp_path / "x"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--workers" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


class _Backend:
    """A backend that runs a unit when waited on, one slot at a time, and records how it was closed."""

    name, slots = "fake", 1

    def __init__(self, fn):
        self.fn, self.tasks, self.ran, self.closed = fn, [], [], None

    def submit(self, task):
        self.tasks.append(task)
        return len(self.tasks) - 1

    def wait(self, handles, timeout):
        self.ran.append(self.tasks[handles[0]]["name"])
        return handles[:1]

    def result(self, handle):
        return self.fn(self.tasks[handle])

    def cancel(self, handles):
        pass

    def close(self, abort=False):
        self.closed = "abort" if abort else "wait"


@pytest.fixture
def fake_backend(monkeypatch):
    from persona_basins.studies.sweep import backends

    made = []

    def make_backend(kind, fn, *, workers):
        made.append(_Backend(lambda task: {"name": task["name"], "threads": task["threads"]}))
        return made[-1]

    monkeypatch.setattr(backends, "make_backend", make_backend)
    return made


def test_queue_runs_units_in_order_and_gathers_each_step(fake_backend):
    from persona_basins.studies.demo_units import unit_queue

    with unit_queue(2) as units:
        first = units.submit([{"name": "a"}, {"name": "b"}])
        later = units.submit([{"name": "c"}])
        assert [r["name"] for r in units.gather(later, "c", unit="units", progress=False)] == ["c"]
        # the earlier units ran first (queue order); their results wait for their own gather
        assert fake_backend[0].ran == ["a", "b", "c"]
        assert [r["name"] for r in units.gather(first, "ab", unit="units", progress=False)] == ["a", "b"]
        assert all(r["threads"] >= 1 for r in units.gather(units.submit([{"name": "d"}]), "d", unit="u"))
    assert fake_backend[0].closed == "wait"


def test_an_interrupted_queue_stops_its_workers(fake_backend):
    from persona_basins.studies.demo_units import unit_queue

    with pytest.raises(KeyboardInterrupt), unit_queue(2):
        raise KeyboardInterrupt
    assert fake_backend[0].closed == "abort"
