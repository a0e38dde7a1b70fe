"""Keras-application-style CNNs (VGG19, DenseNet121/201): timm's convolutional trunk, the CIFAR-10 notebook's classifier head,
and Keras layer names (`block5_conv1`, `conv5_block1_0_bn`, ...) for the trunk's modules, so freezing points
from Keras code carry over."""

import torch
from timm.models.densenet import DenseNet
from timm.models.vgg import VGG
from torch import nn

from src.models.heads import keras_mlp_head
from src.models.timm_models import create_timm_model


def _vgg_names(features: nn.Sequential) -> dict[str, str]:
    names, block, conv = {}, 1, 0
    for index, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            conv += 1
            names[f"block{block}_conv{conv}"] = f"features.{index}"
        elif isinstance(layer, nn.MaxPool2d):
            names[f"block{block}_pool"] = f"features.{index}"
            block, conv = block + 1, 0
    return names


def _densenet_names(features: nn.Sequential) -> dict[str, str]:
    # Keras stage s is timm's denseblock{s-1}; the transition after it is Keras' pool{s}
    names = {"conv1/conv": "features.conv0", "conv1/bn": "features.norm0", "pool1": "features.pool0"}
    names["bn"] = "features.norm5"
    for child, module in features.named_children():
        if child.startswith("denseblock"):
            stage = int(child.removeprefix("denseblock")) + 1
            for k in range(1, len(module) + 1):
                layer, keras = f"features.{child}.denselayer{k}", f"conv{stage}_block{k}"
                names |= {f"{keras}_0_bn": f"{layer}.norm1", f"{keras}_1_conv": f"{layer}.conv1"}
                names |= {f"{keras}_1_bn": f"{layer}.norm2", f"{keras}_2_conv": f"{layer}.conv2"}
        elif child.startswith("transition"):
            stage = int(child.removeprefix("transition")) + 1
            for part, keras in (("norm", "bn"), ("conv", "conv"), ("pool", "pool")):
                names[f"pool{stage}_{keras}"] = f"features.{child}.{part}"
    return names


class KerasCNN(nn.Module):
    """`features` is timm's trunk (`model_name`: vgg19, densenet121, densenet201, ...); `head` is 'keras_mlp'
    (Flatten → Dense 256 → Dropout 0.5 → Dense 256 → Dropout 0.5, the CIFAR-10 notebook's) or 'linear' (global average pool
    → linear). timm's VGG pre-logits (two 4096-wide layers, 120 M parameters) are dropped."""

    def __init__(
        self,
        model_name: str,
        img_size: int,
        num_classes: int,
        head: str = "keras_mlp",
        pretrained: bool = False,
        weights_path: str | None = None,
    ):
        super().__init__()
        if img_size < 32:  # five halvings (VGG's pools, DenseNet's stem and transitions) need 32 px
            raise ValueError(f"img_size={img_size}: {model_name} needs at least 32 px")
        trunk = create_timm_model(model_name, pretrained, weights_path, name_key="model_name")
        if isinstance(trunk, VGG):
            self.keras_names = _vgg_names(trunk.features)
            # Keras' blocks start at block{n}_conv1
            self.block_names = [self.keras_names[f"block{n}_conv1"] for n in range(1, 6)]
        elif isinstance(trunk, DenseNet):
            self.keras_names = _densenet_names(trunk.features)
            self.block_names = [
                f"features.{c}" for c, _ in trunk.features.named_children() if "denseblock" in c
            ]
        else:
            raise ValueError(f"model_name={model_name!r}: KerasCNN knows timm's VGG and DenseNet models")
        self.features = trunk.features
        channels = trunk.feature_info[-1]["num_chs"]
        if head == "keras_mlp":
            with torch.no_grad():  # the flattened size depends on the input size
                in_features = self.features.eval()(torch.zeros(1, 3, img_size, img_size)).numel()
            self.features.train()
            self.head = nn.Sequential(nn.Flatten(), keras_mlp_head(in_features, num_classes))
        elif head == "linear":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        else:
            raise ValueError(f"head={head!r} is not a head; use 'keras_mlp' or 'linear'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
