"""Classifier heads shared by the backbone families."""

from collections.abc import Sequence

from torch import nn


def keras_mlp_head(
    in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256), dropout: float = 0.5
):
    """The CIFAR-10 notebook's Keras head: (Dense → ReLU → Dropout) for each hidden width, then Dense to the classes."""
    layers, width = [], in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, num_classes))
