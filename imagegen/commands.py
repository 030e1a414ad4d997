"""Registers the pipeline-stage commands (implemented in their own modules) on the CLI app."""

from __future__ import annotations

from .cli import app  # noqa: F401
