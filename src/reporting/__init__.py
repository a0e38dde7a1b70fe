"""Reports people read: per-run artefacts (artefacts.py) written by a Lightning callback (callback.py), the curated
hyper-parameters every logger gets (hparams_table.py) and the headline numbers of a run (run_metrics.py).

Imports nothing itself: src.compare reads run_metrics.py without loading Lightning."""
