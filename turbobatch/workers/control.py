"""Control images for ControlNet rows: resolve the reference, read, decode, preprocess.

A row's control image is a path or URL relative to the dataset folder, an absolute fsspec URL,
or the image's raw bytes. A missing or unreadable image fails its row, never the shard.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from turbobatch.output.storage import dataset_root, open_fs
from turbobatch.spec.job import JobSpec

CANNY_LOW, CANNY_HIGH = 100, 200  # the thresholds ControlNet's Canny models were trained with


class ControlImageError(ValueError):
    """This row's control image cannot be used; the message goes to its metadata row."""


def control_reference(value: Any) -> str | None:
    """What metadata records for a control image: its path/URL, or the sha256 of raw bytes."""
    if isinstance(value, (bytes, bytearray)):
        return f"bytes:sha256:{hashlib.sha256(value).hexdigest()}"
    return value


class ControlImageLoader:
    def __init__(self, spec: JobSpec, storage_options: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.storage_options = storage_options or {}
        self.root = dataset_root(spec.input, self.storage_options)

    def decode(self, value: Any) -> Image.Image:
        """A row's control image, read and decoded (RGB), not yet preprocessed."""
        if value is None or value == "" or value == b"":
            raise ControlImageError("control image is null")
        data = value if isinstance(value, (bytes, bytearray)) else self._read(str(value))
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as e:  # noqa: BLE001 - any decode failure is this row's problem
            raise ControlImageError(f"control image {control_reference(value)!r} cannot be decoded: {e}") from None
        return image.convert("RGB")

    def at_size(self, image: Image.Image, height: int, width: int) -> Image.Image:
        """The decoded image preprocessed for an image of this size: canny edges at that size, or
        the image as it is ("none": the pipeline resizes it to the render size itself)."""
        return self._canny(image, height, width) if self.spec.control_preprocess == "canny" else image

    def _read(self, ref: str) -> bytes:
        # Absolute URLs and paths as they are; anything else relative to the dataset folder.
        url = ref if "://" in ref or ref.startswith("/") else f"{self.root}/{ref}"
        try:
            fs, path = open_fs(url, self.storage_options)
            return fs.cat_file(path)
        except FileNotFoundError:
            raise ControlImageError(f"control image {ref!r} not found (looked at {url})") from None
        except Exception as e:  # noqa: BLE001
            raise ControlImageError(f"control image {ref!r} cannot be read: {type(e).__name__}: {e}") from None

    def _canny(self, image: Image.Image, height: int, width: int) -> Image.Image:
        """Resize to the render size as diffusers' control image processor does, then edges."""
        from turbobatch import kernels

        resized = image.resize((width, height), resample=Image.LANCZOS)
        pixels = torch.from_numpy(np.array(resized)).unsqueeze(0)
        edges = kernels.canny(pixels, CANNY_LOW, CANNY_HIGH)[0].numpy()
        return Image.fromarray(np.stack([edges] * 3, axis=-1))
