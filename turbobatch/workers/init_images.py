"""Init images for img2img rows: read, decode, and resize to each image's render size.

A row's init image comes from the same sources as a control image (workers/row_images.py): a path
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

from collections.abc import Iterable
from concurrent.futures import Executor
from typing import Any

from PIL import Image, ImageOps

from turbobatch.spec.job import JobSpec
from turbobatch.workers.row_images import RowImageError, RowImageReader
from turbobatch.workers.rows import Row


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


class InitImageLoader(RowImageReader):
    def __init__(self, spec: JobSpec, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__("init image", spec.input, storage_options)
        self.spec = spec

    def load(self, row: Row) -> None:
        """Decode the row's init image into ``row.init_image`` (and its size), or set its error."""
        try:
            row.init_image = self.decode(row.init)
            row.init_size = row.init_image.size
        except RowImageError as e:
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
