"""Headless front ends: the plain CI transcript and JSON lines."""

from tako_core.report.jsonl import json_line
from tako_core.report.plain import PlainTranscript

__all__ = ["PlainTranscript", "json_line"]
