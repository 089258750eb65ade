"""The unit kinds, one module each: ``organism``, ``em``, ``llc``, ``basins``, ``eigenform``, ``em_hf``.

Each module defines ``KIND`` (a :class:`~.base.UnitKind`) whose settings are the fields of its config
dataclasses; :func:`~.base.register_kind` adds another.
"""

from . import basins, eigenform, em, em_hf, llc, organism
from .base import KINDS, Resolved, SettingError, UnitKind, register_kind

for _module in (organism, em, llc, basins, eigenform, em_hf):
    register_kind(_module.KIND)

__all__ = ["KINDS", "Resolved", "SettingError", "UnitKind", "register_kind"]
