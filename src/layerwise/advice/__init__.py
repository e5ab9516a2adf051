"""The guide's rules of thumb as advice (``rules``: ``suggest()`` and ``check()``), and
the lab's published evidence that the advice cites (``evidence``)."""

from layerwise.advice.rules import (
    PUBLISHED,
    SEVERITIES,
    Finding,
    check,
    corrected_lr,
    format_findings,
    recipe_findings,
    suggest,
    suggest_layers,
)

__all__ = [
    "PUBLISHED",
    "SEVERITIES",
    "Finding",
    "check",
    "corrected_lr",
    "format_findings",
    "recipe_findings",
    "suggest",
    "suggest_layers",
]
