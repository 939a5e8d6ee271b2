"""Regenerate examples/prompts.parquet: ~50 varied prompts, some deliberately messy."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SUBJECTS = ["a red fox", "a lighthouse", "a bowl of ramen", "an astronaut", "a cathedral", "a koi pond",
            "a vintage car", "a snowy mountain", "a robot gardener", "a paper boat"]  # fmt: skip
STYLES = ["at sunset, oil painting", "in the rain, photograph", "isometric pixel art",
          "watercolor, soft light", "studio lighting, 85mm"]  # fmt: skip


def prompts() -> list[str | None]:
    rows: list[str | None] = [f"{s} {style}" for s in SUBJECTS for style in STYLES[:4]]
    rows += [
        "日本の桜並木、春の朝",  # unicode
        "café au lait 🎨☕ — naïve art",  # emoji and accents
        "",  # empty prompt: renders unconditionally
        "a very long prompt " * 60,  # longer than CLIP's 77 tokens: rendered truncated
        None,  # null prompt: an error row
        "tab\tand\nnewline in a prompt",
        "Ünïcödé ĉĥàŕš and RTL עברית text",
        "a single word",
        "x",
        "an owl, " + "detailed feathers, " * 5,
    ]
    return rows


def main() -> None:
    data = prompts()
    table = pa.table({"prompt": pa.array(data, pa.string())})
    out = Path(__file__).with_name("prompts.parquet")
    pq.write_table(table, out, row_group_size=16)
    print(f"wrote {out} ({len(data)} rows)")


if __name__ == "__main__":
    main()
