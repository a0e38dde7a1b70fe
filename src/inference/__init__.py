"""Classifiers from checkpoints and exported files, the input files they read and the predictions they write,
attention maps."""
