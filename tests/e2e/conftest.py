"""Every test here runs on a real local Ray (and, where named, a real S3 server on 127.0.0.1): all
are marked ``slow``, so ``make test-fast`` and ``-m "not slow"`` leave them out."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)
