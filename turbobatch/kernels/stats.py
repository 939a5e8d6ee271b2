"""Per-image quality stats of the post-processed uint8 images: flags black and broken images.

Counts of NaN and +-inf are taken on the float input; mean, std, min and max on the uint8
output (all channels), in 0..255. Sums are exact int64, so both backends agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageStats:
    """One entry per image; tensors of shape [N] on the input's device."""

    nan: torch.Tensor  # int64: NaN values in the float input
    inf: torch.Tensor  # int64: +-inf values in the float input
    mean: torch.Tensor  # float64, over the uint8 output
    std: torch.Tensor  # float64, population std (ddof=0) over the uint8 output
    min: torch.Tensor  # int64
    max: torch.Tensor  # int64

    def broken(self) -> torch.Tensor:
        """True where the decoder produced NaN or inf (e.g. the SDXL fp16 VAE overflow)."""
        return (self.nan + self.inf) > 0

    def black(self, max_value: int = 8) -> torch.Tensor:
        """True where no pixel is brighter than max_value (e.g. a safety-checker blackout)."""
        return self.max <= max_value


def from_partials(partials: torch.Tensor, count: int) -> ImageStats:
    """Reduce the kernel's per-block rows [N, B, 6] = (nan, inf, sum, sumsq, min, max)."""
    nan, inf, total, sq = (partials[..., k].sum(dim=1) for k in range(4))
    n = max(count, 1)
    mean = total.double() / n
    var = (sq.double() / n - mean * mean).clamp(min=0)
    if partials.shape[1] == 0:
        zero = torch.zeros_like(total)
        return ImageStats(nan, inf, mean, var.sqrt(), zero, zero)
    return ImageStats(nan, inf, mean, var.sqrt(), partials[..., 4].amin(dim=1), partials[..., 5].amax(dim=1))
