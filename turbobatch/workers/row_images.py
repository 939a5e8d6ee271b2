"""A row's image (a ControlNet's control image, img2img's init image): resolve the reference, read, decode.

A row's image is a path or URL relative to the dataset folder, an absolute fsspec URL, or the image's raw
bytes. A missing, unreadable, truncated or non-image value raises ``RowImageError`` naming the image: its
row fails alone, never the shard. One loader for both kinds, so they accept the same values.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from PIL import Image

from turbobatch.output.storage import dataset_root, open_fs


class RowImageError(ValueError):
    """This row's image cannot be used; the message goes to its metadata row."""


def image_reference(value: Any) -> str | None:
    """What metadata records for a row's image: its path/URL, or the sha256 of raw bytes."""
    if isinstance(value, (bytes, bytearray)):
        return f"bytes:sha256:{hashlib.sha256(value).hexdigest()}"
    return value


class RowImageReader:
    """Reads and decodes one kind of row image (``what``: "control image", "init image") of a dataset."""

    def __init__(self, what: str, input_url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.what = what
        self.storage_options = storage_options or {}
        self.root = dataset_root(input_url, self.storage_options)

    def decode(self, value: Any) -> Image.Image:
        """The row's image, read and fully decoded (a truncated file raises here), as RGB."""
        if value is None or value == "" or value == b"":
            raise RowImageError(f"{self.what} is null")
        data = value if isinstance(value, (bytes, bytearray)) else self._read(str(value))
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            return image.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decode failure is this row's problem
            raise RowImageError(f"{self.what} {image_reference(value)!r} cannot be decoded: {e}") from None

    def _read(self, ref: str) -> bytes:
        # Absolute URLs and paths as they are; anything else relative to the dataset folder.
        url = ref if "://" in ref or ref.startswith("/") else f"{self.root}/{ref}"
        try:
            fs, path = open_fs(url, self.storage_options)
            return fs.cat_file(path)
        except FileNotFoundError:
            raise RowImageError(f"{self.what} {ref!r} not found (looked at {url})") from None
        except Exception as e:  # noqa: BLE001
            raise RowImageError(f"{self.what} {ref!r} cannot be read: {type(e).__name__}: {e}") from None
