"""Every benchmark command: python -m src.bench (the speed suite), src.bench.quickstart,
src.bench.distillation, src.bench.predict, src.bench.cost."""
