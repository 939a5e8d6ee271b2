"""Init images for img2img rows: read, decode, and resize to each image's render size.

A row's init image comes from the same sources as a control image (workers/control.py): a path
or URL relative to the dataset folder, an absolute fsspec URL, or the image's raw bytes. A
missing, unreadable, truncated or non-image value fails its row alone (its batch-mates render).

``--resize-mode`` says how an image of another size or aspect becomes the render size:

- ``center_crop`` (default): scale to cover the size, keep the middle (no distortion, no borders);
- ``fit``: scale to fit inside, pad with black (the whole image, with borders);
- ``stretch``: resize to the size (the whole image, distorted when the aspect differs).

The result is exactly the render size, so diffusers' img2img preprocessing (which keeps the
size) sees the same pixels as a plain pipeline call given the resized image.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

from PIL import Image, ImageOps

from turbobatch.output.storage import dataset_root, open_fs
from turbobatch.spec.job import JobSpec
from turbobatch.workers.control import control_reference
from turbobatch.workers.rows import Row

init_reference = control_reference  # metadata records a path/URL, or the sha256 of raw bytes


class InitImageError(ValueError):
    """This row's init image cannot be used; the message goes to its metadata row."""


def resize(image: Image.Image, height: int, width: int, mode: str) -> Image.Image:
    """``image`` at exactly (height, width), by ``mode`` (see the module's docstring)."""
    if image.size == (width, height):
        return image
    if mode == "center_crop":
        return ImageOps.fit(image, (width, height), method=Image.LANCZOS)
    if mode == "fit":
        return ImageOps.pad(image, (width, height), method=Image.LANCZOS, color=(0, 0, 0))
    if mode == "stretch":
        return image.resize((width, height), resample=Image.LANCZOS)
    raise ValueError(f"unknown resize mode {mode!r}")


class InitImageLoader:
    def __init__(self, spec: JobSpec, storage_options: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.storage_options = storage_options or {}
        self.root = dataset_root(spec.input, self.storage_options)

    def decode(self, value: Any) -> Image.Image:
        """A row's init image, read and fully decoded (a truncated file raises here), as RGB."""
        if value is None or value == "" or value == b"":
            raise InitImageError("init image is null")
        data = value if isinstance(value, (bytes, bytearray)) else self._read(str(value))
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            return image.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decode failure is this row's problem
            raise InitImageError(f"init image {init_reference(value)!r} cannot be decoded: {e}") from None

    def _read(self, ref: str) -> bytes:
        url = ref if "://" in ref or ref.startswith("/") else f"{self.root}/{ref}"
        try:
            fs, path = open_fs(url, self.storage_options)
            return fs.cat_file(path)
        except FileNotFoundError:
            raise InitImageError(f"init image {ref!r} not found (looked at {url})") from None
        except Exception as e:  # noqa: BLE001
            raise InitImageError(f"init image {ref!r} cannot be read: {type(e).__name__}: {e}") from None

    def load(self, row: Row) -> None:
        """Decode the row's init image into ``row.init_image`` (and its size), or set its error."""
        try:
            row.init_image = self.decode(row.init)
            row.init_size = row.init_image.size
        except InitImageError as e:
            row.error = str(e)

    def load_rows(self, rows: Iterable[Row], pool: Executor) -> None:
        """Every valid row's init image, decoded on ``pool``'s threads."""
        list(pool.map(self.load, [r for r in rows if r.error is None]))

    def at_sizes(self, images: list[Row], pool: Executor) -> None:
        """Each image's init image at its own render size, resized once per row and size."""

        def key(image: Row) -> tuple[int, int, int]:
            return image.global_index, image.params.height, image.params.width

        firsts: dict[tuple[int, int, int], Row] = {}
        for image in images:
            firsts.setdefault(key(image), image)
        mode = self.spec.resize_mode
        made = dict(
            zip(
                firsts,
                pool.map(lambda i: resize(i.init_image, i.params.height, i.params.width, mode), firsts.values()),
            )
        )
        for image in images:
            image.init_image = made[key(image)]
