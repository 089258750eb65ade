"""persona-basins: persona basins, emergent misalignment, LLC and degeneracy, measured."""

__version__ = "0.1.0"
