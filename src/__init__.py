"""vitlab: Lightning + Hydra experiments for image classification.

Importing it registers no config resolvers: the entry points do (src/resolvers.py)."""

# before any entry point builds a Trainer (and in every DDP rank, which imports src again)
from src.upstream_noise import silence_upstream_noise

silence_upstream_noise()
