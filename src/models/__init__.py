"""Backbones only: plain PyTorch modules that map images to class logits (no Lightning, no data code)."""
