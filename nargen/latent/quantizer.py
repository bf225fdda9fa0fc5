"""Vector quantization for discrete latents (VQ-VAE, van den Oord et al. 2017; EMA
codebooks and decomposed quantization as in Kaiser et al. 2018 and Roy et al. 2018):
nearest-code lookup with straight-through gradients, exponential-moving-average codebook
updates, a commitment loss, k-means initialisation from the first training batch, and
restart of codes nobody uses.

With ``groups > 1`` a vector is split into ``groups`` slices, each quantized by its own
codebook of ``codebook_size`` codes, so a latent is a tuple of ``groups`` codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuantizerConfig:
    codebook_size: int = 256
    groups: int = 1
    """Decomposed quantization: independent codebooks over ``groups`` slices."""
    decay: float = 0.99
    """EMA decay of code counts and sums."""
    commitment: float = 0.25
    """Weight of ``|| x - sg(q) ||²``, which keeps encoder outputs near their codes."""
    kmeans_iters: int = 10
    """k-means iterations on the first training batch (0: random codes from it)."""
    dead_threshold: float = 0.01
    """A code whose EMA count falls below this is restarted at a random batch vector."""
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if self.codebook_size < 2 or self.groups < 1:
            raise ValueError("codebook_size must be >= 2 and groups >= 1")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay}")


@dataclass
class Quantized:
    """``vectors``: quantized inputs (straight-through: their gradient flows to the
    inputs); ``codes``: ``[..., groups]``; ``commitment_loss``: scalar; ``perplexity``
    and ``live_share`` of this batch's code usage, averaged over groups."""

    vectors: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    live_share: torch.Tensor


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` centres of ``points`` ``[n, d]`` by Lloyd's algorithm from ``k`` random
    points (with repetition when ``n < k``); an empty cluster keeps its centre."""
    n = points.shape[0]
    pick = torch.randint(n, (k,), generator=generator) if n < k else torch.randperm(n, generator=generator)[:k]
    centres = points[pick.to(points.device)].clone()
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return centres


class VectorQuantizer(nn.Module):
    """Quantizes ``[..., dim]`` vectors (``dim`` divisible by ``groups``)."""

    def __init__(self, dim: int, config: QuantizerConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or QuantizerConfig()
        if dim % c.groups:
            raise ValueError(f"dim={dim} is not divisible by groups={c.groups}")
        self.dim, self.part = dim, dim // c.groups
        self.register_buffer("codebook", torch.randn(c.groups, c.codebook_size, self.part))
        self.register_buffer("ema_count", torch.ones(c.groups, c.codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, parts: torch.Tensor) -> torch.Tensor:
        """Code of each slice: ``parts`` ``[n, groups, part]`` to ``[n, groups]``."""
        distances = (
            parts.pow(2).sum(-1, keepdim=True)
            - 2 * torch.einsum("ngd,gkd->ngk", parts, self.codebook)
            + self.codebook.pow(2).sum(-1)[None]
        )
        return distances.argmin(-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Vectors ``[..., dim]`` of codes ``[..., groups]``."""
        flat = codes.reshape(-1, self.config.groups)
        groups = torch.arange(self.config.groups, device=codes.device)[None].expand_as(flat)
        return self.codebook[groups, flat].reshape(*codes.shape[:-1], self.dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> Quantized:
        """Quantize ``x``; in training, ``mask`` (True = real) picks the vectors that
        initialise and update the codebooks."""
        c = self.config
        parts = x.reshape(-1, c.groups, self.part)
        real = parts.detach()[mask.reshape(-1)] if mask is not None else parts.detach()
        if self.training and real.shape[0]:
            with torch.no_grad():
                if not bool(self.initialised):
                    self._initialise(real.float())
        codes = self.nearest(parts.detach().float())
        quantized = self.lookup(codes).to(x.dtype).reshape(x.shape)
        keep = mask[..., None] if mask is not None else torch.ones_like(x[..., :1], dtype=torch.bool)
        commitment = ((x - quantized.detach()).pow(2) * keep).sum() / (keep.sum() * self.dim).clamp(min=1)
        used = codes[mask.reshape(-1)] if mask is not None else codes
        if self.training and real.shape[0]:
            with torch.no_grad():
                self._ema_update(real.float(), used)
        perplexity, live = self.usage(used)
        straight = x + (quantized - x).detach()
        return Quantized(straight, codes.reshape(*x.shape[:-1], c.groups), c.commitment * commitment,
                         perplexity, live)

    def usage(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Perplexity of the code distribution of ``codes`` ``[n, groups]`` and the share
        of codes used at least once, each averaged over groups."""
        k = self.config.codebook_size
        counts = torch.stack([torch.bincount(codes[:, g], minlength=k) for g in range(codes.shape[1])]).float()
        probs = counts / counts.sum(1, keepdim=True).clamp(min=1)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(1)
        return entropy.exp().mean(), (counts > 0).float().mean()

    def _initialise(self, real: torch.Tensor) -> None:
        c = self.config
        for g in range(c.groups):
            centres = kmeans(real[:, g], c.codebook_size, c.kmeans_iters)
            self.codebook[g] = centres
            self.ema_sum[g] = centres
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    def _ema_update(self, real: torch.Tensor, codes: torch.Tensor) -> None:
        c = self.config
        for g in range(c.groups):
            onehot = torch.nn.functional.one_hot(codes[:, g], c.codebook_size).to(real.dtype)
            self.ema_count[g].mul_(c.decay).add_(onehot.sum(0), alpha=1 - c.decay)
            self.ema_sum[g].mul_(c.decay).add_(onehot.t() @ real[:, g], alpha=1 - c.decay)
            total = self.ema_count[g].sum()
            smoothed = (self.ema_count[g] + c.epsilon) / (total + c.codebook_size * c.epsilon) * total
            self.codebook[g] = self.ema_sum[g] / smoothed[:, None]
            dead = self.ema_count[g] < c.dead_threshold
            if bool(dead.any()):  # restart at random vectors of this batch
                pick = torch.randint(real.shape[0], (int(dead.sum()),), device=real.device)
                self.codebook[g][dead] = real[pick, g]
                self.ema_sum[g][dead] = real[pick, g]
                self.ema_count[g][dead] = 1.0

    def extra_repr(self) -> str:
        c = self.config
        return f"dim={self.dim}, groups={c.groups}, codebook_size={c.codebook_size}, bits={c.groups * math.log2(c.codebook_size):g}"
