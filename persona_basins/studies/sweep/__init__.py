"""Sweeps: grids of units run resumably on a process pool or on Ray (docs/SWEEP.md).

A SPEC is a TOML file::

    kind = "em"                      # the unit kind: organism | em | llc | basins | eigenform | em_hf
    [settings]                       # fixed settings of every unit (the fields of the kind's configs)
    preset = "tiny"
    steps = 300
    [axes]                           # the grid is the cartesian product of the axes ...
    seed = [0, 1]
    condition = ["plain", "inoculated"]
    # ... or a listed subset:  points = [{seed = 0, condition = "plain"}, ...]

Every unit is *content-addressed*: its folder ``RUN/units/<kind>-<hash>/`` is named by a hash of its fully
resolved config (package version, every setting with defaults filled in, and the identity of what it reads),
so a finished unit is never re-run, a changed setting makes a new unit, and a rerun of the same SPEC resumes.
Each unit is built through the run store (:func:`persona_basins.results.get_or_run`, keyed by its resolved
config); an organism folder is identified by :func:`persona_basins.models.organism.organism_fingerprint`.
Units that read an organism built from a preset, or an adapter trained for them, depend on an ``organism``
or ``em`` unit, built once and shared.

Modules: :mod:`.spec` (parse and check a SPEC), :mod:`.plan` (units, dependencies, ids), :mod:`.execute`
(one unit in a worker, the scheduler, resume, the lock), :mod:`.backends` (inline, local process pool, Ray),
:mod:`.record` (sweep.json, table.csv, summaries) and :mod:`.kinds` (one module per unit kind).
"""

from .backends import Backend, InlineBackend, LocalBackend, RayBackend, make_backend
from .execute import Outcome, RunLock, done_units, estimate_seconds, execute_unit, run_sweep
from .kinds import KINDS, Resolved, SettingError, UnitKind, register_kind
from .plan import Plan, Unit, plan, unit_id
from .record import (
    aggregate,
    cell_interval,
    default_heatmap_axes,
    dry_run_lines,
    heatmap_data,
    load_record,
    summary_lines,
    sweep_record,
    table_csv,
    write_results,
)
from .spec import MAX_UNITS, Spec, load_spec, parse_spec

__all__ = [
    "KINDS",
    "MAX_UNITS",
    "Backend",
    "InlineBackend",
    "LocalBackend",
    "Outcome",
    "Plan",
    "RayBackend",
    "Resolved",
    "RunLock",
    "SettingError",
    "Spec",
    "Unit",
    "UnitKind",
    "aggregate",
    "cell_interval",
    "default_heatmap_axes",
    "done_units",
    "dry_run_lines",
    "estimate_seconds",
    "execute_unit",
    "heatmap_data",
    "load_record",
    "load_spec",
    "make_backend",
    "parse_spec",
    "plan",
    "register_kind",
    "run_sweep",
    "summary_lines",
    "sweep_record",
    "table_csv",
    "unit_id",
    "write_results",
]
