"""benchmarks/demo_estimate.py's queue simulation: the demo's order and waits, on one and on two workers."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "demo_estimate", Path(__file__).parents[1] / "benchmarks" / "demo_estimate.py"
)
demo_estimate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_estimate)


def test_one_worker_runs_the_units_one_after_another():
    units = [("em", "a", 3.0), ("em", "b", 2.0), ("scans", "c", 4.0), ("llc", "d", 1.0)]
    assert demo_estimate.simulate(units, 10.0, 1) == {"em": 15.0, "scans": 19.0, "llc": 20.0}


def test_later_steps_wait_for_the_fine_tunes_and_the_llc_for_the_scans():
    units = [("em", "a", 4.0), ("em", "b", 1.0), ("scans", "c", 1.0), ("overlap", "o", 6.0)]
    units += [("llc", "d", 2.0)]
    ends = demo_estimate.simulate(units, 0.0, 2)
    # b's worker is free at 1 but the scans read every adapter: they start when a ends (4)
    assert ends["em"] == 4.0 and ends["scans"] == 5.0 and ends["overlap"] == 10.0
    assert ends["llc"] == 7.0  # after the scans, on the worker that ran them


def test_the_default_queue_holds_every_unit_of_the_demo():
    from persona_basins.studies.demo import DEMO_PRESETS

    cfg = DEMO_PRESETS["default"]
    kinds = ("em_tracked", "em_untracked", "scan_base", "scan_plain", "scan_inoculated", "overlap")
    times = dict.fromkeys((*kinds, "eigenform", "llc_full", "llc_layer"), 1.0)
    steps = [step for step, _, _ in demo_estimate.demo_units_in_order(cfg, times)]
    assert steps.count("em") == 5 * cfg.seeds and steps.count("scans") == 2 * cfg.seeds + 1
    assert steps.count("llc") == 2 * cfg.llc_seeds and steps[-1] == "llc"
