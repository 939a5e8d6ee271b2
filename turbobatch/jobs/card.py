"""OUT/README.md, the dataset card: what `datasets`, the Hub and people read first.

Written (or refreshed) at the end of every run from the output folder's own records: the plan,
the done markers (through their summaries, output/summary.py: only markers new since are read) and the
resolved spec. Its YAML front matter has ``configs`` naming the committed data files of the job's
format (tars for ``tar``, ``data/*.parquet`` for ``parquet``, the metadata files for ``files``), so
``datasets.load_dataset(OUT)`` reads exactly the committed shards, and ``dataset_info`` declaring
their features (the job's one schema, output/columns.py) and the number of examples, so no reader has
to infer types. The text says what is in it, how and when it was made (model, VAE, ControlNet,
sampling, the spec without secrets) and that the images inherit the model's license terms.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from typing import Any

import pyarrow as pa
import yaml

from turbobatch.jobs.prepare import resume
from turbobatch.output import layout, summary
from turbobatch.output.columns import IMAGE_TYPE, job_data_schema, job_metadata_schema, kept_schema
from turbobatch.output.features import features_yaml
from turbobatch.output.storage import Folder
from turbobatch.spec import sampling
from turbobatch.spec.expand import Expansion
from turbobatch.spec.job import JobSpec
from turbobatch.spec.resolved import ResolvedJob

MARK = "<!-- Written by turbobatch at the end of every run (jobs/card.py): edits are overwritten. -->"


def write_card(out: Folder, spec: ResolvedJob, model_location: str | None = None) -> str:
    """Write OUT/README.md for the shards committed now; returns its text."""
    plan = out.read_json(layout.PLAN)
    planned = {s["shard_id"] for s in plan["shards"]}
    listing = resume.done_listing(out, len(planned))  # complete blocks from their summaries (S3)
    done = {i: listing.versions[i] for i in listing.versions.keys() & planned}
    markers = summary.done_markers(out, done, stored=listing.summaries)  # in shard id order
    text = card_text(spec, plan, markers, model_license(model_location), out.display())
    out.write_bytes(layout.CARD, text.encode())
    return text


# -- the YAML front matter ---------------------------------------------------------------------
def declared_schema(spec: ResolvedJob) -> tuple[pa.Schema, tuple[str, ...]]:
    """The columns a `datasets` reader gets from the config's files, and which of them are images."""
    if spec.format == "tar":  # the webdataset builder: one column per member extension, plus its own two
        ext = spec.image_extension
        columns = [
            (ext, IMAGE_TYPE),
            ("json", pa.struct(list(job_metadata_schema(spec)))),
            ("__key__", pa.string()),
            ("__url__", pa.string()),
        ]
        return pa.schema(columns), (ext,)
    if spec.format == "parquet":
        return job_data_schema(spec), ("image",)
    return job_metadata_schema(spec), ()


def data_files(spec: ResolvedJob, shard_ids: list[int]) -> list[str]:
    path = {"tar": layout.tar_path, "parquet": layout.data_path}.get(spec.format, layout.metadata_path)
    return [path(i) for i in shard_ids]


def front_matter(spec: ResolvedJob, markers: list[dict[str, Any]]) -> dict[str, Any]:
    schema, images = declared_schema(spec)
    examples = sum(m["ok"] if spec.format in ("tar", "parquet") else m["rows"] for m in markers)
    info: dict[str, Any] = {"features": features_yaml(schema, images)}
    card: dict[str, Any] = {"tags": ["synthetic", "turbobatch"], "task_categories": ["text-to-image"]}
    if markers:  # without a committed file there is nothing a config could name
        files = data_files(spec, [m["shard"] for m in markers])
        card["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": files}]}]
        info["splits"] = [{"name": "train", "num_bytes": split_bytes(markers, files), "num_examples": examples}]
    card["dataset_info"] = info
    return card


def split_bytes(markers: list[dict[str, Any]], files: list[str]) -> int:
    """The bytes of the split's data files, as their done markers record them. `datasets` requires a
    ``num_bytes`` beside ``num_examples`` (without it every load warns that the card's ``splits`` are
    malformed) and recounts it, as Arrow bytes, when it prepares the split."""
    return sum(m.get("files", {}).get(path, {}).get("bytes", 0) for m, path in zip(markers, files))


# -- the text ----------------------------------------------------------------------------------
def card_text(
    spec: ResolvedJob,
    plan: dict[str, Any],
    markers: list[dict[str, Any]],
    license: str | None,
    where: str,
    now: datetime | None = None,
) -> str:
    now = now or datetime.now(UTC)
    head = yaml.safe_dump(front_matter(spec, markers), sort_keys=False, allow_unicode=True, width=1000)
    sections = [
        f"---\n{head}---",
        MARK,
        f"# {_title(where)}",
        _summary(spec),
        _contents(spec, plan, markers),
        _loading(spec, where),
        _how_made(spec, plan, markers, now),
        _license(spec, license),
        _spec_section(spec),
    ]
    return "\n\n".join(sections) + "\n"


def _title(where: str) -> str:
    return where.rstrip("/").rsplit("/", 1)[-1] or where


def _summary(spec: ResolvedJob) -> str:
    extra = f" with the VAE `{spec.vae}`" if spec.vae else ""
    if spec.controlnet:
        extra += f" and the ControlNet `{spec.controlnet}`"
    per_row = Expansion.of(spec).per_row
    each = "one per input row" if per_row == 1 else f"{per_row} per input row ({_expansion_words(spec)})"
    return (
        f"Synthetic images rendered from text prompts by `{spec.model}`{extra}, {each} that rendered, "
        "by turbobatch (a Ray + diffusers batch renderer)."
    )


def _expansion_words(spec: ResolvedJob) -> str:
    expansion = Expansion.of(spec)
    parts = [f"{expansion.images_per_prompt} images per prompt"] if expansion.images_per_prompt > 1 else []
    if expansion.sweep:
        parts.append(f"{expansion.combinations} sweep combinations of " + ", ".join(expansion.names))
    return " x ".join(parts)


_LAYOUT = {
    "tar": "WebDataset tars `shards/SSSSSS.tar`: per ok row `<key>.{ext}` (the image) and `<key>.json` (its "
    "metadata row, every field, null where empty)",
    "parquet": "Parquet tables `data/SSSSSS.parquet`: per ok row the image (a `datasets` Image: bytes and "
    "path), key, prompt, seed, the kept columns and the other metadata fields",
    "files": "one file per image, `images/SSSSSS/<key>.{ext}`; the configs read the metadata (`image` is the "
    "file's path in this folder)",
}


def _contents(spec: ResolvedJob, plan: dict[str, Any], markers: list[dict[str, Any]]) -> str:
    ok, error = sum(m["ok"] for m in markers), sum(m["error"] for m in markers)
    size = sum(m.get("image_bytes", 0) for m in markers)
    total = plan["num_shards"]
    complete = "" if len(markers) == total else " (incomplete: run the same render command again to finish)"
    kept = kept_schema(spec)
    per_row = Expansion.of(spec).per_row
    counted = (
        f"{ok + error:,}: {ok:,} ok (one image each), {error:,} error (no image; reason in metadata)"
        if per_row == 1
        else f"{ok + error:,} metadata rows, one per image ({per_row} per input row: "
        f"{_expansion_words(spec)}): {ok:,} ok, {error:,} error (no image; reason in metadata)"
    )
    rows = [
        ("shards", f"{len(markers)} of {total} committed{complete}"),
        ("rows", counted),
        ("images", f"{ok:,} {spec.image_format.upper()}, {_sizes(spec)}, {size / 2**20:,.1f} MiB"),
        ("layout", _LAYOUT[spec.format].format(ext=spec.image_extension)),
        ("metadata", "`metadata/SSSSSS.parquet`: one row per image, ok or error"),
        ("kept input columns", ", ".join(f"`{f.name}` ({f.type})" for f in kept) or "none"),
    ]
    return "## Contents\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _loading(spec: ResolvedJob, where: str) -> str:
    lines = [
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{where}", split="train")  # this folder (a local path or a Hub id)',
    ]
    if spec.format == "tar":
        lines += [
            "",
            "import glob",
            "import webdataset as wds",
            "",
            f'tars = sorted(glob.glob("{where}/shards/*.tar"))  # local; any list of tar URLs works',
            'images = wds.WebDataset(tars, shardshuffle=False).decode("pil")  # sample["'
            + spec.image_extension
            + '"], sample["json"]',
        ]
    if spec.format == "files":
        lines += [f'images = load_dataset("imagefolder", data_dir="{where}/images", split="train")  # images only']
    lines += [
        "```",
        "",
        "Only shards with a done marker (`_done/SSSSSS.json`) are complete; the configs above list "
        "exactly those. `turbobatch verify` checks the files against their markers.",
    ]
    return "\n".join(lines)


def _how_made(spec: ResolvedJob, plan: dict[str, Any], markers: list[dict[str, Any]], now: datetime) -> str:
    committed = sorted(m.get("committed_at", "") for m in markers)
    version = _version()
    rows = [
        ("model", f"`{spec.model}`" + (" (random weights)" if spec.weights == "random" else "")),
        ("VAE", f"`{spec.vae}`" if spec.vae else "the model's own"),
        (
            "ControlNet",
            f"`{spec.controlnet}`, scale {spec.controlnet_scale}, preprocess {spec.control_preprocess}, "
            f"control images from column `{spec.control_image_column}`"
            if spec.controlnet
            else "none",
        ),
        ("img2img", _img2img_words(spec)),
        ("LoRA", _lora_words(spec)),
        (
            "sampling",
            f"{spec.steps} step(s), guidance scale {spec.guidance_scale}, {spec.width}x{spec.height}, "
            f"{spec.dtype} on {spec.device}" + _varied(spec),
        ),
        ("seeds", _seeds(spec)),
        (
            "prompts",
            (f"template `{spec.prompt_template}`" if spec.prompt_template else f"column `{spec.prompt_column}`")
            + (f", negative prompts from `{spec.negative_prompt_column}`" if spec.negative_prompt_column else ""),
        ),
        (
            "made with",
            f"turbobatch {version}; planned {plan.get('planned_at', '?')}; shards committed "
            f"{committed[0] if committed else '-'} to {committed[-1] if committed else '-'}; "
            f"card written {now.isoformat(timespec='seconds')}",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"## How it was made\n\n| | |\n|---|---|\n{table}\n\nThe command (rerun it to resume):\n\n```\n{command_line(spec)}\n```"


def _img2img_words(spec: ResolvedJob) -> str:
    """Where the init images came from and how they were used (metadata: init_image,
    init_width, init_height, strength, resize_mode)."""
    if not spec.init_image_column:
        return "none (text to image)"
    per_row = f", per row from `{spec.strength_column}`" if spec.strength_column else ""
    return (
        f"init images from column `{spec.init_image_column}`, strength {spec.strength}{per_row}, "
        f"resized by {spec.resize_mode} (each image's in metadata: `init_image`, `init_width`, `init_height`, "
        "`strength`, `resize_mode`)"
    )


def _lora_words(spec: ResolvedJob) -> str:
    """The LoRAs (sources and scales) and whether they were fused or picked per row (metadata: lora)."""
    if not spec.lora:
        return "none"
    listed = ", ".join(f"`{name}` = `{source}` x {scale:g}" for name, source, scale in spec.lora)
    how = f"one per row by column `{spec.lora_column}`" if spec.lora_column else "fused into the weights"
    return f"{listed} ({how}; each image's in metadata: `lora`)"


def _sizes(spec: ResolvedJob) -> str:
    varied = {name for name, _ in spec.sweep or []} | spec.sampling_columns.keys()
    size = f"{spec.width}x{spec.height}"
    return size + (" unless swept or set per row (see metadata)" if varied & set(sampling.SIZE_NAMES) else "")


def _varied(spec: ResolvedJob) -> str:
    """What varies per image: the sweep's values, the per-row columns (metadata has each image's)."""
    parts = [f"swept {name}: {', '.join(map(str, values))}" for name, values in spec.sweep or []]
    parts += [f"{name} from column `{column}`" for name, column in spec.sampling_columns.items()]
    return ("; " + "; ".join(parts) + " (each image's values are in its metadata)") if parts else ""


def _seeds(spec: ResolvedJob) -> str:
    n = spec.images_per_prompt
    if n == 1:
        seeds = f"column `{spec.seed_column}` where present and valid, else {spec.seed} + the row's global index"
    else:
        seeds = (
            f"image j of a row: column `{spec.seed_column}` + j where present and valid, else {spec.seed} + the "
            f"row's global index x {n} + j"
        )
    return seeds + ("; every sweep combination of a row and j shares its seed" if spec.sweep else "")


def command_line(spec: ResolvedJob) -> str:
    """``turbobatch render`` with the options that shape the output, where they differ from the defaults."""
    defaults = JobSpec()
    parts = ["turbobatch", "render", shlex.quote(spec.input), shlex.quote(spec.output)]
    for name in (*spec.OUTPUT_FIELDS, "variant"):
        if name in ResolvedJob.RESOLVED_FIELDS:  # the variants come from --variant, which the user gives
            continue
        value = getattr(spec, name)
        if name == "sweep":
            for swept, values in value or []:  # values holding a comma need the YAML file's list form
                parts += ["--sweep", shlex.quote(f"{swept}={','.join(map(str, values))}")]
        elif value != getattr(defaults, name) and value is not None:
            parts += [f"--{name.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(parts)


def _license(spec: ResolvedJob, license: str | None) -> str:
    terms = (
        f"its model card states the license **{license}**"
        if license
        else "its model card could not be read here, so check the license there before you use or share them"
    )
    return (
        f"## License\n\nThe images were generated with `{spec.model}` and inherit the terms of that model's "
        f"license; {terms}. The prompts and kept columns come from the input dataset and keep its terms."
    )


def _spec_section(spec: ResolvedJob) -> str:
    public = {k: v for k, v in spec.to_public_dict().items() if k != "kept_schema"}  # the card's features say it
    return (
        "## Job spec\n\nSecrets in storage options are shown as `***`.\n\n```json\n"
        + json.dumps(public, indent=1)
        + "\n```"
    )


def _version() -> str:
    try:
        return importlib_metadata.version("turbobatch")
    except importlib_metadata.PackageNotFoundError:
        return "(not installed)"


# -- the model's license ------------------------------------------------------------------------
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


def model_license(location: str | None) -> str | None:
    """The license a model's own card (README.md front matter) states, from a local folder or
    the Hugging Face cache; never the network. ``other`` licenses are named with their
    ``license_name`` and ``license_link``."""
    text = _model_card(location) if location else None
    match = _FRONT_MATTER.match(text or "")
    try:
        front = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    if not isinstance(front, dict) or not front.get("license"):
        return None
    named = [str(front[k]) for k in ("license_name", "license_link") if front.get(k)]
    return f"{front['license']} ({', '.join(named)})" if named else str(front["license"])


def _model_card(location: str) -> str | None:
    path = os.path.join(location, "README.md")
    if not os.path.isdir(location):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(location, "README.md")
        except Exception:  # noqa: BLE001 - not a repo id (bundled:...), no cache: no card here
            return None
        path = cached if isinstance(cached, str) else ""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None
