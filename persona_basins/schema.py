"""The one result schema: ``study.json`` keys and shapes, defined once in ``data/study.schema.json``.

The JSON Schema is shipped with the package (a reader in another language can use it as it is); this module
loads it and validates a study before it is written, so the file on disk, the explorer and the docs cannot
drift apart silently. Validation uses the ``jsonschema`` library (Draft 2020-12).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "study.schema.json"


class SchemaError(RuntimeError):
    """A study that does not match the schema: a bug in the code that produced it, not bad user input."""


@functools.cache
def study_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def validate_study(study: dict, *, partial: bool = False) -> None:
    """Raise :class:`SchemaError` naming the first offending key path when ``study`` breaks the schema.

    ``partial``: the keys present must have the schema's shapes, but none is required (synthetic or
    hand-made runs for the explorer).
    """
    import jsonschema

    from .results import jsonable

    schema = study_schema()
    if partial:
        schema = {k: v for k, v in schema.items() if k != "required"}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(jsonable(study)), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise SchemaError(f"study.json breaks the schema at {where}: {e.message} ({len(errors)} problem(s))")


__all__ = ["SCHEMA_FILE", "SchemaError", "study_schema", "validate_study"]
