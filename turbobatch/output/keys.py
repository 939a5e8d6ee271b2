"""Row keys: the names of a row's output objects.

A key is the input's key column (sanitized) if the spec names one, else the row's global index,
zero-padded. Sanitized keys hold only letters, digits and ``-_=+@,`` so they are safe as file
names and as WebDataset sample keys (which split at the first dot).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

MAX_KEY_CHARS = 120
_UNSAFE = re.compile(r"[^\w\-=+@,]", re.UNICODE)


def index_key(global_index: int, width: int) -> str:
    return f"{global_index:0{width}d}"


def sanitize_key(raw: Any) -> str | None:
    """Key column value -> safe key, or None when the value cannot name a row."""
    if raw is None:
        return None
    text = _UNSAFE.sub("_", str(raw))
    if len(text) > MAX_KEY_CHARS:  # keep it a valid file name, and still unique
        digest = hashlib.sha256(str(raw).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        text = f"{text[: MAX_KEY_CHARS - 17]}_{digest}"
    return text or None
