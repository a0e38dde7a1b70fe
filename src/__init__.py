"""vitlab: Lightning + Hydra experiments for image classification.

Importing it registers no config resolvers: the entry points do (src/cli/resolvers.py)."""

from src.cli.garbage_collector import pause_for_imports
from src.upstream_fixes.noise import silence_upstream_noise

# first of all: the collector rests while a command (python -m src.train, ...) imports (src/cli/garbage_collector.py)
pause_for_imports()
# before any entry point builds a Trainer (and in every DDP rank, which imports src again)
silence_upstream_noise()
