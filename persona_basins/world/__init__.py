"""The synthetic persona world (ground truth) and its tokenizer."""

from .world import (
    ASSISTANT_LINE,
    INOCULATION_LINE,
    STYLES,
    TEACHING_MODIFIER,
    Document,
    Exchange,
    Label,
    Persona,
    World,
    WorldConfig,
    is_misaligned,
)

__all__ = [
    "ASSISTANT_LINE",
    "INOCULATION_LINE",
    "STYLES",
    "TEACHING_MODIFIER",
    "Document",
    "Exchange",
    "Label",
    "Persona",
    "World",
    "WorldConfig",
    "is_misaligned",
]
