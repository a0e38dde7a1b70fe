"""LightningDataModules: one file per data set, sharing the loaders and transforms in base.py/transforms.py."""
