"""A Vision Transformer written from scratch (Dosovitskiy et al. 2020), sized by default like ViT-Lite-7/4.

Pre-norm blocks, a class token and learned position embeddings; attention runs through
`F.scaled_dot_product_attention`, which picks the fused flash/memory-efficient kernels where they exist.

Two options make it a Compact Convolutional Transformer (CCT, Hassani et al. 2021, "Escaping the Big Data
Paradigm with Compact Transformers"; conf/model/cct.yaml): `tokenizer="conv"` cuts the image into tokens with
small convolutions + max-pooling instead of patches, and `pool="seq"` (sequence pooling) replaces the class token
by an attention-weighted mean of all tokens. CCT's blocks apply a LayerNorm to the residual stream after
attention; ours stay plain pre-norm blocks (the same parameters, so the same counts).

Fewer tokens (src/models/token_learner.py, off by default): `token_learner={num_tokens: S, layer: L}` replaces
the patch tokens by S learned ones after block L (the class token, if any, carries on beside them; `pool=mean` averages
the S tokens); `fuse: true` wraps every block from L on in TokenLearner -> block -> TokenFuser, so all H*W
tokens come back after each. `downsample=[{after: 2, size: 3, dim: 128}, ...]` resamples the token map after
block `after` to size x size (FDViT's flexible downsampling: non-integer strides) at width `dim` (default: the
same); a class token is projected to the new width. Position embeddings are added once, at the input, as in
FDViT; the 3x3 convolutions of the downsampling layers see the map's layout after that.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.models.token_learner import FlexibleDownsample, TokenFuser, TokenLearner, block_widths


class PatchEmbed(nn.Module):
    """Cuts the image into non-overlapping patches and projects each one to `dim` (a strided conv does both)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)


class ConvTokenizer(nn.Module):
    """CCT's tokenizer (SHI-Labs/Compact-Transformers `Tokenizer`): `num_layers` x (conv k x k without bias, stride
    max(1, k // 2 - 1), padding max(1, k // 2) -> ReLU -> max-pool 3 / stride 2 / padding 1 when `max_pool`);
    the inner convs have 64 channels, the last one `dim`. Overlapping kernels keep the local structure that
    patches cut apart, which is what lets a transformer learn from small data sets."""

    def __init__(
        self, img_size: int, in_chans: int, dim: int, kernel_size: int, num_layers: int, max_pool: bool
    ):
        super().__init__()
        if kernel_size < 1 or num_layers < 1:
            raise ValueError(f"kernel_size={kernel_size} / num_layers={num_layers}: both must be at least 1")
        stride, padding = max(1, kernel_size // 2 - 1), max(1, kernel_size // 2)
        channels = [in_chans] + [64] * (num_layers - 1) + [dim]
        self.proj = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False),
                    nn.ReLU(),
                    nn.MaxPool2d(3, 2, 1) if max_pool else nn.Identity(),
                )
                for c_in, c_out in zip(channels[:-1], channels[1:], strict=False)
            )
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
        with torch.no_grad():  # the token count follows from the convolutions' arithmetic
            self.num_patches = self(torch.zeros(1, in_chans, img_size, img_size)).shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_dropout: float, dropout: float, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        # False: the explicit softmax(q k^T / sqrt(d)) path, whose probabilities attn_drop's forward hooks see
        # (src.explain switches it off while explaining, as timm's fused_attn; training keeps the fused kernel)
        self.fused_attn = True
        self.attn_drop = nn.Dropout(attn_dropout)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = (
            self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        )
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        else:
            x = self.attn_drop(((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples (Huang et al. 2016)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_dim, dropout, attn_dropout, drop_path, qkv_bias=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attn_dropout, dropout, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """`tokenizer`: "patch" (non-overlapping `patch_size` patches) or "conv" (CCT's, sized by `conv_kernel`,
    `conv_layers`, `conv_pool`). `pool`: "cls" (the class token), "mean" (mean of the patch tokens, the class
    token still in the sequence) or "seq" (CCT's sequence pooling; no class token)."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 256,
        depth: int = 7,
        num_heads: int = 4,
        mlp_dim: int = 512,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        pool: str = "cls",
        tokenizer: str = "patch",
        conv_kernel: int = 3,
        conv_layers: int = 1,
        conv_pool: bool = True,
        qkv_bias: bool = True,
        token_learner: dict | None = None,
        downsample: list[dict] | None = None,
    ):
        super().__init__()
        if pool not in ("cls", "mean", "seq"):
            raise ValueError(f"pool={pool!r} is not a pooling: use cls, mean or seq")
        if tokenizer not in ("patch", "conv"):
            raise ValueError(f"tokenizer={tokenizer!r} is unknown: use patch or conv")
        self.pool = pool
        # one name for either tokenizer, so that checkpoints of the patch model keep their keys
        self.patch_embed = (
            PatchEmbed(img_size, patch_size, in_chans, embed_dim)
            if tokenizer == "patch"
            else ConvTokenizer(img_size, in_chans, embed_dim, conv_kernel, conv_layers, conv_pool)
        )
        # sequence pooling weighs the tokens themselves: no class token then (as CCT)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool != "seq" else None
        self.num_prefix_tokens = 0 if self.cls_token is None else 1
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        side = math.isqrt(self.patch_embed.num_patches)
        widths = block_widths(depth, side, embed_dim, num_heads, token_learner, downsample)
        # stochastic depth grows linearly with depth, as in DeiT
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.Sequential(  # the MLP keeps its width ratio when downsampling changes the width
            *(
                Block(w, num_heads, mlp_dim * w // embed_dim, dropout, attn_dropout, r, qkv_bias)
                for w, r in zip(widths, rates, strict=True)
            )
        )
        # extra layers keyed by the index of the block they come before (ModuleDict keys are strings)
        self.downsample = nn.ModuleDict(
            {str(s["after"]): FlexibleDownsample(widths[s["after"] - 1], widths[s["after"]], s["size"])
             for s in downsample or []}
        )  # fmt: skip
        tl = dict(token_learner or {})
        num_tokens, first = tl.get("num_tokens"), tl.get("layer")
        learned = [] if num_tokens is None else range(first, depth) if tl.get("fuse") else [first]
        self.token_learner = nn.ModuleDict(
            {str(i): TokenLearner(widths[i], num_tokens, dropout=dropout) for i in learned}
        )
        self.token_fuser = nn.ModuleDict(
            {str(i): TokenFuser(widths[i], num_tokens, dropout=dropout) for i in learned if tl.get("fuse")}
        )
        self.num_features = widths[-1]
        self.norm = nn.LayerNorm(self.num_features)
        # sequence pooling: a score per token, softmax over the tokens, their weighted sum
        self.attn_pool = nn.Linear(self.num_features, 1) if pool == "seq" else None
        self.head = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for fuser in self.token_fuser.values():
            fuser.init_weights()

    def no_weight_decay(self) -> set[str]:
        """Parameters that weight decay must skip (read by timm's optimizer helpers)."""
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.forward_blocks(self.pos_drop(x + self.pos_embed))
        return self.norm(x)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        p = self.num_prefix_tokens
        for i, block in enumerate(self.blocks):
            key = str(i)
            if key in self.downsample:
                x = self.downsample[key](x, p)
            if key in self.token_learner:
                original = x[:, p:]
                x = torch.cat([x[:, :p], self.token_learner[key](original)], dim=1)
            x = block(x)
            if key in self.token_fuser:  # back to all positions, plus the residual (scenic's EncoderModFuser)
                x = torch.cat([x[:, :p], self.token_fuser[key](x[:, p:], original) + original], dim=1)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            x = x[:, 0]
        elif self.pool == "mean":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        else:  # (B, 1, N) token weights times (B, N, dim) tokens
            x = (self.attn_pool(x).softmax(dim=1).transpose(1, 2) @ x).squeeze(1)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
