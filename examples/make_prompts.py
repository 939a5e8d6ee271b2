"""Regenerate examples/prompts.parquet: ~50 varied prompts, some deliberately messy.

``--inputs DIR`` instead writes the small inputs README.md's examples read: ``DIR/prompts/`` (a
folder of Parquet: ``prompt``, and ``steps``, ``w``, ``h`` for the per-row example, null where the
flags' values apply) and ``DIR/subjects.parquet`` (``subject`` and ``style``, for the template
examples). With ``--tiny`` the per-row sizes suit the tiny test model (32/48 pixels instead of
512/768: at 512x512 even tiny-sd-turbo takes seconds per image on a laptop CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SUBJECTS = [
    "a red fox",
    "a lighthouse",
    "a bowl of ramen",
    "an astronaut",
    "a cathedral",
    "a koi pond",
    "a vintage car",
    "a snowy mountain",
    "a robot gardener",
    "a paper boat",
]
STYLES = [
    "at sunset, oil painting",
    "in the rain, photograph",
    "isometric pixel art",
    "watercolor, soft light",
    "studio lighting, 85mm",
]


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


def write_inputs(folder: Path, tiny: bool = False) -> list[Path]:
    """The README's example inputs in ``folder``; returns the files written."""
    small, large = (32, 48) if tiny else (512, 768)
    per_row = pa.table(
        {
            "prompt": [f"{s} {style}" for s, style in zip(SUBJECTS[:8], STYLES * 2)],
            "steps": pa.array([1, 2, None, 4, 1, None, 2, 1], pa.int64()),
            "w": pa.array([small, large, None, small, None, large, small, None], pa.int64()),
            "h": pa.array([small, small, None, large, None, large, small, None], pa.int64()),
        }
    )
    subjects = pa.table(
        {"subject": ["red fox", "lighthouse", "bowl of ramen"], "style": ["black-and-white", "hazy", "macro"]}
    )
    paths = [folder / "prompts" / "part-0.parquet", folder / "subjects.parquet"]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for table, path in zip((per_row, subjects), paths):
        pq.write_table(table, path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=Path, metavar="DIR", help="write the README's example inputs into DIR")
    parser.add_argument("--tiny", action="store_true", help="with --inputs: per-row sizes for the tiny test model")
    args = parser.parse_args(argv)
    if args.inputs is not None:
        for path in write_inputs(args.inputs, args.tiny):
            print(f"wrote {path} ({pq.read_metadata(path).num_rows} rows)")
        return
    data = prompts()
    table = pa.table({"prompt": pa.array(data, pa.string())})
    out = Path(__file__).with_name("prompts.parquet")
    pq.write_table(table, out, row_group_size=16)
    print(f"wrote {out} ({len(data)} rows)")


if __name__ == "__main__":
    main()
