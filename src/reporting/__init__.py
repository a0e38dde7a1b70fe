"""Reports people read: per-run artefacts (artefacts.py) written by a Lightning callback (callback.py)."""

from src.reporting.callback import ReportCallback

__all__ = ["ReportCallback"]
