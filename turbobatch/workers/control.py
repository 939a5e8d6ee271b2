"""Control images for ControlNet rows: resolve the reference, read, decode, preprocess.

A row's control image comes from the sources workers/row_images.py reads (paths, URLs, raw bytes);
a missing or unreadable image fails its row, never the shard.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from turbobatch.spec.job import JobSpec
from turbobatch.workers.row_images import RowImageReader

CANNY_LOW, CANNY_HIGH = 100, 200  # the thresholds ControlNet's Canny models were trained with


class ControlImageLoader(RowImageReader):
    def __init__(self, spec: JobSpec, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__("control image", spec.input, storage_options)
        self.spec = spec

    def at_size(self, image: Image.Image, height: int, width: int) -> Image.Image:
        """The decoded image preprocessed for an image of this size: canny edges at that size, or
        the image as it is ("none": the pipeline resizes it to the render size itself)."""
        return self._canny(image, height, width) if self.spec.control_preprocess == "canny" else image

    def _canny(self, image: Image.Image, height: int, width: int) -> Image.Image:
        """Resize to the render size as diffusers' control image processor does, then edges."""
        from turbobatch import kernels

        resized = image.resize((width, height), resample=Image.LANCZOS)
        pixels = torch.from_numpy(np.array(resized)).unsqueeze(0)
        edges = kernels.canny(pixels, CANNY_LOW, CANNY_HIGH)[0].numpy()
        return Image.fromarray(np.stack([edges] * 3, axis=-1))
