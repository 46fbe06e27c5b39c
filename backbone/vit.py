"""Vision Transformers for faces (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale", ICLR 2021) as insightface arcface_torch trains them on WebFace42M
(`recognition/arcface_torch/backbones/vit.py`; An et al., "Killing Two Birds with One Stone:
Efficient and Robust Training of Face Recognition CNNs by Partial FC", CVPR 2022).

- 112x112 input cut into 9x9 patches by a strided conv: 12x12 = 144 tokens (the last 4 rows and
  columns of pixels are not covered), no class token, a learned position embedding.
- Pre-norm blocks: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)); multi-head attention
  (8 heads) with a bias-free qkv projection and a biased output projection; MLP ratio 4 with ReLU6.
- After the final LayerNorm the 144 x D tokens are flattened and go through Linear (bias-free) ->
  BatchNorm1d -> Linear (bias-free) -> BatchNorm1d, both BN with eps 2e-5: the embedding.
- Training only: a random `mask_ratio` of the tokens (after the position embedding) skip the blocks
  and come back, after the final norm, as a learned mask token at their positions; stochastic depth
  drops whole residual branches per sample, at a rate rising linearly from 0 at the first block to
  `drop_path_rate` at the last.

Parameter names and shapes are those of arcface_torch's VisionTransformer (`patch_embed.proj`,
`pos_embed`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, `feature.0-3`,
`mask_token`), so its checkpoints load with the identity key mapping. The attention products run in
float32 even under autocast, as the reference computes them; through
`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels).
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import checkpointed

IMAGE_SIZE = 112
PATCH_SIZE = 9
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
MLP_RATIO = 4
HEAD_BN_EPS = 2e-5
INIT_STD = 0.02


class DropPath(nn.Module):
    """Stochastic depth: in training, each sample's branch is zeroed with probability `p` and the
    kept ones are scaled by 1 / (1 - p), so the expectation is unchanged; the identity otherwise.
    The draws come from torch's global generator, which training checkpoints restore."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T / sqrt(head_dim)) v over [B, heads, tokens, head_dim] tensors, computed in at
    least float32 with autocast off (the reference's precision: half-precision q/k/v from autocast
    are upcast first). A module rather than a bare call so that backbone.complexity can count its
    multiply-accumulates with a hook."""

    def forward(self, q, k, v):
        dtype = torch.promote_types(q.dtype, torch.float32)
        if q.dtype != dtype:
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        device_type = q.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r}; valid: a positive divisor of the width {dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.product = ScaledDotProductAttention()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        # qkv's output features are laid out (q | k | v), each head after head.
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.product(q, k, v)  # [B, heads, tokens, head_dim]
        return self.proj(out.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth on both residual branches."""

    def __init__(self, dim: int, num_heads: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, MLP_RATIO * dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbedding(nn.Module):
    """[B,3,112,112] -> [B,144,D]: one token per 9x9 patch, in row-major patch order."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x):
        # (not while tracing for export, where the sizes are traced values and the check a warning)
        if not torch.jit.is_tracing() and x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"the ViT takes {IMAGE_SIZE}x{IMAGE_SIZE} images, got {tuple(x.shape)}")
        # [B, D, 12, 12] -> [B, 12, 12, D] -> [B, 144, D]; a view when the conv output is channels_last
        return self.proj(x).permute(0, 2, 3, 1).flatten(1, 2)


def _check_rate(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r}; valid: a number in [0, 1)")


class VisionTransformer(nn.Module):
    """ViT of width `dim` and `depth` blocks; float [B,3,112,112] -> [B, embedding_size].

    `mask_ratio` and `drop_path_rate` act in training only. `grad_checkpoint` recomputes each
    block's activations in the backward pass instead of storing them (training with grad only)."""

    def __init__(self, dim: int, depth: int, embedding_size: int = 512, num_heads: int = 8,
                 drop_path_rate: float = 0.1, mask_ratio: float = 0.1, grad_checkpoint: bool = False):
        super().__init__()
        _check_rate("drop_path_rate", drop_path_rate)
        _check_rate("mask_ratio", mask_ratio)
        self.mask_ratio = mask_ratio
        self.grad_checkpoint = grad_checkpoint
        self.patch_embed = PatchEmbedding(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES, dim))
        rates = [drop_path_rate * index / max(1, depth - 1) for index in range(depth)]
        self.blocks = nn.ModuleList(Block(dim, num_heads, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim)
        self.feature = nn.Sequential(
            nn.Linear(NUM_PATCHES * dim, dim, bias=False),
            nn.BatchNorm1d(dim, eps=HEAD_BN_EPS),
            nn.Linear(dim, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size, eps=HEAD_BN_EPS),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self._init_weights()

    def _init_weights(self):
        # The reference's: truncated normal (std 0.02) for linear weights and the position
        # embedding, normal (std 0.02) for the mask token, zero biases, unit LayerNorms; the patch
        # conv and the BNs keep PyTorch's defaults.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.normal_(self.mask_token, std=INIT_STD)

    def unused_in_training(self) -> set[str]:
        """Parameters that a training forward leaves without a gradient (DDP must be told): the mask
        token when nothing is masked (vit_h's own mask_ratio is 0)."""
        return {"mask_token"} if self.mask_ratio == 0 else set()

    def forward(self, x):
        tokens = self.patch_embed(x) + self.pos_embed
        masking = self.training and self.mask_ratio > 0
        if masking:
            # A random permutation per sample from torch's global generator; the first `kept` of it
            # go through the blocks.
            count, width = tokens.shape[1], tokens.shape[2]
            kept = int(count * (1 - self.mask_ratio))
            order = torch.rand(tokens.shape[:2], device=tokens.device).argsort(dim=1)
            tokens = tokens.gather(1, order[:, :kept, None].expand(-1, -1, width))
        checkpointing = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            tokens = checkpointed(block, tokens) if checkpointing else block(tokens)
        tokens = self.norm(tokens)
        if masking:
            fill = self.mask_token.to(tokens.dtype).expand(tokens.shape[0], count - kept, -1)
            shuffled = torch.cat([tokens, fill], dim=1)
            # token i of the shuffled sequence goes back to position order[i]
            tokens = torch.zeros_like(shuffled).scatter(1, order[:, :, None].expand(-1, -1, width), shuffled)
        return self.feature(tokens.flatten(1))


# (width, depth) and the training regularisation of arcface_torch's get_model: vit_t/s/b as its
# "vit_t", "vit_s", "vit_b"; vit_l as its only ViT-L, "vit_l_dp005_mask_005"; vit_h as "vit_h".
vit_t = partial(VisionTransformer, 256, 12)
vit_s = partial(VisionTransformer, 512, 12)
vit_b = partial(VisionTransformer, 512, 24)
vit_l = partial(VisionTransformer, 768, 24, drop_path_rate=0.05, mask_ratio=0.05)
vit_h = partial(VisionTransformer, 1024, 48, mask_ratio=0.0)
