"""vitlab: Lightning + Hydra experiments for image classification."""
