"""Encode a uint8 HWC image to PNG, JPEG or WebP bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: np.ndarray, image_format: str, quality: int | None) -> bytes:
    buf = io.BytesIO()
    options = {} if quality is None else {"quality": quality}
    Image.fromarray(image).save(buf, format=_PIL_FORMATS[image_format], **options)
    return buf.getvalue()
