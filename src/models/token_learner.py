"""Fewer tokens part-way through a ViT: TokenLearner, TokenFuser and FDViT's flexible downsampling.

- TokenLearner V1.1 (Ryoo et al. 2021, "TokenLearner: What Can 8 Learned Tokens Do for Images and Videos?",
  arXiv:2106.11297; google-research/scenic `projects/token_learner/model.py`, `TokenLearnerModuleV11`):
  LayerNorm -> MLP (C -> 64 -> S, GELU) -> softmax over the H*W positions -> S weighted sums of the input
  tokens. Scenic recommends V1.1 over V1 (3x3 convs + sigmoid) "in general"; scenic's ImageNet ViT-B/16
  config puts S = 16 after layer 9 of 12.
- TokenFuser (same file, `TokenFuser`, used by `EncoderModFuser`): LayerNorm -> a Linear across the S tokens
  (zero-initialised) -> LayerNorm; each of the H*W original positions gets sigmoid(MLP(LayerNorm(original)))
  weights over the S tokens and takes their weighted sum; the caller adds the original tokens back
  (a residual). With TokenFuser every block from `layer` on is wrapped: TokenLearner -> block -> TokenFuser.
- Flexible downsampling (Xu et al., ICCV 2023, "FDViT: Improve the Hierarchical Architecture of Vision
  Transformer"; AMD-AIG-AIMA/AMD_FDViT `fdvit.py`, `bilinear_conv_pooling`): LayerNorm -> tokens to a map ->
  bilinear resampling to a fixed size (any size, so strides need not be integers; FDViT-S uses
  27 -> 19 -> 14 -> 10 -> 7, about 1/sqrt(2) per stage) -> 3x3 convolution that changes the width.
  FDViT resamples with `F.grid_sample` on a linspace(-1, 1) grid with align_corners=True, which is the same
  as `F.interpolate(mode="bilinear", align_corners=True)` used here (tests/models/test_token_learner.py checks it).
  FDViT has no class token; ours goes through a Linear to the new width, as PiT's class token does
  (Heo et al. 2021, naver-ai/pit `conv_head_pooling.fc`). FDViT's masked-autoencoder training branch is
  not included.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(dim: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    """Scenic's MlpBlock: Dense -> GELU -> Dropout -> Dense -> Dropout."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out), nn.Dropout(dropout)
    )


class TokenLearner(nn.Module):
    """TokenLearner V1.1: (B, N, C) tokens -> (B, S, C) learned tokens, each a softmax-weighted sum over N."""

    def __init__(self, dim: int, num_tokens: int, bottleneck: int = 64, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = _mlp(dim, bottleneck, num_tokens, dropout)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, N) spatial weights: for each learned token, a distribution over the input positions."""
        return self.attention(self.norm(x)).transpose(1, 2).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x) @ x


class TokenFuser(nn.Module):
    """(B, S, C) processed tokens and the (B, N, C) tokens they came from -> (B, N, C); add `original` after."""

    def __init__(self, dim: int, num_tokens: int, bottleneck: int = 64, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mix = nn.Linear(num_tokens, num_tokens)  # across tokens, not channels
        self.norm2 = nn.LayerNorm(dim)
        self.norm_original = nn.LayerNorm(dim)
        self.attention = _mlp(dim, bottleneck, num_tokens, dropout)
        self.drop = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        # scenic zero-initialises the mixing kernel: a fresh fuser adds nothing to the residual stream
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, tokens: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        tokens = self.norm2(self.mix(self.norm1(tokens).transpose(1, 2)).transpose(1, 2))
        weights = self.attention(self.norm_original(original)).sigmoid()  # (B, N, S)
        return self.drop(weights @ tokens)


class FlexibleDownsample(nn.Module):
    """FDViT's flexible downsampling: (B, P + side_in**2, C_in) -> (B, P + size**2, C_out), where the P prefix
    tokens (the class token) are projected by a Linear and the map is resampled bilinearly, then convolved."""

    def __init__(self, in_dim: int, out_dim: int, size: int):
        super().__init__()
        self.size = size
        self.norm = nn.LayerNorm(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.prefix = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, num_prefix: int) -> torch.Tensor:
        prefix, tokens = x[:, :num_prefix], self.norm(x[:, num_prefix:])
        side = math.isqrt(tokens.shape[1])
        grid = tokens.transpose(1, 2).reshape(x.shape[0], -1, side, side)
        grid = F.interpolate(grid, size=(self.size, self.size), mode="bilinear", align_corners=True)
        return torch.cat([self.prefix(prefix), self.conv(grid).flatten(2).transpose(1, 2)], dim=1)


def block_widths(
    depth: int, side: int, embed_dim: int, num_heads: int, token_learner: dict | None, downsample: list | None
) -> list[int]:
    """Each block's width, after checking the TokenLearner and downsampling settings against the network (a
    ValueError naming these arguments; src/cli/checks.py words it in config keys before a run builds the model)."""
    tl = dict(token_learner or {})
    if tl.get("num_tokens") is not None:
        if tl["num_tokens"] <= 0:
            raise ValueError(
                f"token_learner.num_tokens={tl['num_tokens']}: it must be at least 1 (8 or 16 in the "
                "paper); or token_learner.num_tokens=null to switch TokenLearner off"
            )
        layer = tl.get("layer")
        if layer is None or not 0 <= layer < depth:
            raise ValueError(
                f"token_learner.layer={layer} with depth={depth}: set a layer from 0 to {depth - 1} "
                "(the number of blocks that run on all patch tokens first)"
            )
    widths, dim, after_before = [embed_dim] * depth, embed_dim, 0
    for spec in downsample or []:
        spec = dict(spec)
        after, size = spec.get("after"), spec.get("size")
        if after is None or size is None or not after_before < after < depth:
            raise ValueError(
                f"downsample entry {spec}: give after (blocks before it, increasing, 1 to {depth - 1}) "
                "and size (the new map side), e.g. downsample=[{after:2,size:3,dim:128}]"
            )
        if not 1 <= size <= side:
            raise ValueError(
                f"downsample entry {spec}: size={size} is larger than the {side}x{side} token map "
                f"there (or below 1): use a size from 1 to {side}"
            )
        if tl.get("num_tokens") is not None and not tl.get("fuse") and after > tl["layer"]:
            raise ValueError(
                f"downsample entry {spec} comes after TokenLearner (layer {tl['layer']}), which leaves "
                "no token map to resample: move it before, or set token_learner.fuse=true"
            )
        dim = spec.get("dim") or dim
        if dim % num_heads:
            raise ValueError(f"downsample entry {spec}: dim={dim} is not divisible by num_heads={num_heads}")
        widths[after:] = [dim] * (depth - after)
        side, after_before = size, after
    return widths
