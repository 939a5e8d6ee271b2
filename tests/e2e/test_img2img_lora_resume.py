"""img2img with per-row strengths and per-row LoRAs, killed mid-run and resumed through real Ray:
the resumed output equals an uninterrupted run's byte for byte (a redone shard reproduces its
init-image encode, its noise and its LoRA switches exactly), every row once, the bad init image's
row an error both times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, write_parquet
from tests.helpers import (
    assert_complete_and_clean,
    image_digests,
    kill_driver_mid_run,
    metadata_without_timings,
    read_metadata,
)
from tests.lora_helpers import make_tiny_lora
from tests.unit.workers.test_init_images import png
from turbobatch import faults

ROWS, SHARD = 18, 3  # 6 shards


def test_img2img_lora_column_job_killed_and_resumed_is_byte_for_byte(tmp_path: Path):
    data = tmp_path / "in"
    (data / "img").mkdir(parents=True)
    for i in range(ROWS - 1):  # the last row's image is missing: an error row
        (data / "img" / f"{i}.png").write_bytes(png(i, (40 + 4 * i, 36)))
    lora = make_tiny_lora("tiny-sd-turbo", tmp_path / "lora", seed=1)
    prompts = write_parquet(
        data / "prompts.parquet",
        {
            "prompt": [f"prompt {i}" for i in range(ROWS)],
            "init": [f"img/{i}.png" for i in range(ROWS)],
            "s": [[0.5, None, 1.0][i % 3] for i in range(ROWS)],
            "style": [["ink", None][i % 2] for i in range(ROWS)],
        },
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def command(out: Path) -> list[str]:
        return [
            *(sys.executable, "-m", "turbobatch", "render", str(prompts), str(out)),
            *("--model", "tiny-sd-turbo", "--height", "32", "--width", "32", "--steps", "2"),
            *("--shard-size", str(SHARD), "--workers", "1"),
            *("--init-image-column", "init", "--strength-column", "s", "--strength", "0.5"),
            *("--lora", f"ink={lora}:0.8", "--lora-column", "style"),
        ]

    reference = tmp_path / "reference"
    first = subprocess.run(command(reference), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]  # an error row (the missing image) fails no shard

    out = tmp_path / "out"
    slow_env = {**env, faults.ENV: json.dumps({"delay_s": 0.3})}
    committed_before = kill_driver_mid_run(command(out), out, slow_env, REPO, timeout=180)
    assert 2 <= committed_before < ROWS // SHARD

    again = subprocess.run(command(out), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{committed_before} already committed" in again.stderr
    assert_complete_and_clean(out, ROWS // SHARD, ROWS)
    assert image_digests(out) == image_digests(reference)
    assert metadata_without_timings(out) == metadata_without_timings(reference)
    rows = read_metadata(out)
    assert [r["status"] for r in rows] == ["ok"] * (ROWS - 1) + ["error"]
    assert [r["strength"] for r in rows[:3]] == [0.5, 0.5, 1.0]
    assert [r["lora"] is not None for r in rows[:2]] == [True, False]
    assert rows[0]["init_width"] == 40 and rows[5]["init_width"] == 60
