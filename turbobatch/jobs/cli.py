"""Command line: ``turbobatch render|status|verify`` (``python -m turbobatch``): the render flags and each command's entry.

Option names are a contract other tools and docs rely on; each flag's ``dest`` is the
JobSpec field of the same name, so YAML files and flags share one vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any

import yaml

from turbobatch.errors import EXIT_BAD_JOB, EXIT_INTERRUPTED, EXIT_TERMINATED, JobError, MissingArgument
from turbobatch.jobs.console import exit_code_of, exit_without_teardown, invoked_as, json_object
from turbobatch.jobs.estimate.dryrun import dry_run
from turbobatch.jobs.inspect import status, verify
from turbobatch.jobs.run import render
from turbobatch.jobs.run.signals import SIGTERM_RECEIVED, TERMINATED_MESSAGE, sigterm_interrupts
from turbobatch.spec.job import (
    COMPILE_MODES,
    CONTROL_PREPROCESS,
    DEFAULT_SPEEDUPS,
    DEVICES,
    DTYPES,
    FORMATS,
    IMAGE_FORMATS,
    SPEEDUPS,
    VARIANTS,
    WEIGHTS,
    JobSpec,
    RunOptions,
)


def build_render_parser(prog: str = "turbobatch render") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Render a Parquet prompt dataset into an image dataset on a Ray cluster. "
        "Rerun the same command to resume: only shards without a done marker are rendered.",
        argument_default=argparse.SUPPRESS,  # absent flags stay absent: YAML values survive
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("input", nargs="?", help="Parquet file, folder or glob; any fsspec URL")
    p.add_argument("output", nargs="?", help="output folder URL (local path, s3://, gs://, ...)")
    p.add_argument("--config", help="job YAML file with the same fields (flags override it)")
    p.add_argument(
        "--model",
        help="Hugging Face id (stabilityai/sd-turbo, stabilityai/sdxl-turbo), local "
        "diffusers folder, fsspec URL of one (s3://bucket/models/sd-turbo/, read with the input storage "
        "options; each node copies it once), or tiny-sd-turbo / tiny-sdxl-turbo "
        "(default stabilityai/sd-turbo)",
    )
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        help="weight files of --model, --vae and --controlnet: auto loads "
        "the fp16 files (*.fp16.safetensors, half the download) when the job renders in float16 or "
        "bfloat16 and the model has them, else the plain ones; fp16 requires them; none never uses "
        "them (default auto)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="denoising steps (default: the model's; sd/sdxl-turbo 1, Z-Image-Turbo 8, FLUX.2 klein 4)",
    )
    p.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance (default: the model's; 0.0, FLUX.2 klein 1.0)"
    )
    p.add_argument("--height", type=int, help="image height, multiple of 8 (default: the model's native size)")
    p.add_argument("--width", type=int, help="image width, multiple of 8 (default: the model's native size)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="images per batch on every device (default 8); an image is the "
        "same within 1 level of 255 at any batch size",
    )
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (default float16 on CUDA, float32 on CPU)")
    p.add_argument(
        "--device",
        choices=DEVICES,
        help="where actors render (default: cuda when the Ray "
        "cluster has GPUs, else cpu; say cuda for an autoscaling cluster whose GPU nodes start at 0)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="the most render actors the job uses; more than the cluster has "
        "now start as nodes join (default: GPUs in the Ray cluster / --worker-gpus, else 1)",
    )
    p.add_argument(
        "--min-workers",
        type=int,
        help="render actors that must be ready before rendering starts; the others join as they start (default 1)",
    )
    p.add_argument(
        "--worker-gpus",
        type=float,
        help="GPUs per render actor; a fraction such as 0.5 puts two actors on one GPU (default 1 on CUDA)",
    )
    p.add_argument(
        "--worker-cpus",
        type=float,
        help="CPUs per render actor; on CPU also torch's threads "
        "(default: 1 on CUDA; on CPU the cluster's CPUs divided by --workers at start)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        help="stop with exit code 1 when no render actor is ready, "
        "or no shard committed while shards are in flight, for this many seconds (default 1800)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        help="images per shard, the unit of commit and resume; a shard is a "
        "range of the job's images and may cut a row's images in two (default 1000)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="tar: WebDataset shards/SSSSSS.tar; "
        "files: images/SSSSSS/<key>.<ext>; parquet: data/SSSSSS.parquet, images and fields in one "
        "Hugging Face table (default tar)",
    )
    p.add_argument("--image-format", choices=IMAGE_FORMATS, help="image encoding (default png)")
    p.add_argument("--quality", type=int, help="jpeg/webp quality 1-100 (default jpeg 95, webp 90)")
    p.add_argument(
        "--seed",
        type=int,
        help="job seed: a row without its own seed uses seed + "
        "its global index (image j of N per prompt: seed + global index * N + j) (default 0)",
    )
    p.add_argument("--prompt-column", help="column holding the prompt (default prompt)")
    p.add_argument("--negative-prompt-column", help="column holding the negative prompt (default none)")
    p.add_argument("--seed-column", help="column of per-row seeds, used when present (default seed)")
    p.add_argument(
        "--key-column",
        help="column of unique row keys used to name images (default: the row's global index, zero-padded)",
    )
    p.add_argument(
        "--images-per-prompt",
        type=int,
        metavar="N",
        help="images per input row (per sweep "
        "combination): image j takes seed s + j (s: the row's seed), else seed + global_index * N + j; "
        "key <key>_<j> (default 1)",
    )
    p.add_argument(
        "--prompt-template",
        metavar="TEXT",
        help="build each row's prompt from its columns, e.g. "
        "'a {style} photo of a {subject}': fields name input columns ({prompt} is the prompt column) or "
        "swept names; a null field is that row's error (default: the prompt column as it is)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        metavar="NAME=V1,V2",
        help="render every combination of these "
        "values per row (repeat the flag per name; the last name varies fastest): steps, guidance_scale, "
        "width, height, or a template field, e.g. --sweep steps=1,2,4 --sweep style=ink,oil; a name given "
        "here replaces the --config file's values for it (default: no sweep)",
    )
    for name, what in (
        ("steps", "denoising steps"),
        ("guidance-scale", "guidance scale"),
        ("width", "image width"),
        ("height", "image height"),
    ):
        p.add_argument(
            f"--{name}-column",
            metavar="COLUMN",
            help=f"column of per-row {what}, checked as --{name} "
            f"is (a bad value is that row's error); null: --{name}; not with --sweep {name}",
        )
    p.add_argument(
        "--keep-columns",
        metavar="LIST",
        help="input columns to copy into every metadata row, tar "
        "json and data row, comma-separated, with their types; '*' for every column the job does not "
        "use otherwise and whose name turbobatch does not write (default none)",
    )
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        help="random: build stabilityai/sd-turbo, sdxl-turbo, Tongyi-MAI/Z-Image-Turbo or "
        "black-forest-labs/FLUX.2-klein-4B at full size from bundled configs with random weights (real FLOPs, meaningless pixels) for speed "
        "work without a download (default pretrained)",
    )
    p.add_argument(
        "--vae",
        help="VAE to use instead of the pipeline's: Hugging Face id, local folder, fsspec URL or "
        "tiny-taesd; an AutoencoderKL (e.g. an fp16-fixed SDXL VAE) or an AutoencoderTiny "
        "(madebyollin/taesd for sd-turbo, madebyollin/taesdxl for sdxl-turbo: a much cheaper decode, "
        "slightly softer images)",
    )
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help="torch.compile the UNet in each worker with this "
        "mode (reduce-overhead adds CUDA graphs): faster calls after a first call that compiles for "
        "minutes, and again for each new batch shape; worth it for long jobs (default off)",
    )
    p.add_argument(
        "--speedups",
        metavar="LIST",
        help=f"the worker's speed changes, comma-separated from "
        f"{', '.join(SPEEDUPS)}; 'default' = {','.join(DEFAULT_SPEEDUPS)}; 'none' for plain eager "
        "models (docs/BENCHMARKS.md has each one's measured effect; default: default)",
    )
    p.add_argument(
        "--controlnet",
        help="ControlNet: Hugging Face id, local folder, fsspec URL, tiny-sd-controlnet or "
        "tiny-sdxl-controlnet; SD 2.1 ControlNets pair with sd-turbo, SDXL ones with sdxl-turbo",
    )
    p.add_argument(
        "--control-image-column",
        help="column of control images: a path or URL relative to the "
        "dataset folder, an absolute fsspec URL, or raw image bytes",
    )
    p.add_argument(
        "--control-preprocess",
        choices=CONTROL_PREPROCESS,
        help="turn control images into Canny edge maps first, or use them as they are (default none)",
    )
    p.add_argument("--controlnet-scale", type=float, help="ControlNet conditioning scale (default 1.0)")
    p.add_argument(
        "--init-image-column",
        metavar="COLUMN",
        help="img2img: column of init images (path or URL relative to the dataset folder, fsspec URL "
        "or image bytes); each image starts from its row's image, VAE-encoded and noised to --strength",
    )
    p.add_argument(
        "--strength",
        type=float,
        help="img2img: how far the init image is noised, 0-1 (1: ignored); steps * strength must be >= 1 (default 0.5)",
    )
    p.add_argument(
        "--strength-column", metavar="COLUMN", help="img2img: column of per-row strengths (null: --strength)"
    )
    p.add_argument(
        "--resize-mode",
        choices=("center_crop", "fit", "stretch"),
        help="img2img: how an init image of another size becomes the render size: scale and crop the middle, "
        "scale to fit and pad with black, or stretch (default center_crop)",
    )
    p.add_argument(
        "--lora",
        action="append",
        metavar="[NAME=]SOURCE[:SCALE]",
        help="a LoRA (repeatable): Hugging Face id, folder, .safetensors file or fsspec URL, scale default 1; "
        "fused into the weights at load unless --lora-column picks one per row",
    )
    p.add_argument(
        "--lora-column",
        metavar="COLUMN",
        help="column naming each row's LoRA (one of the --lora names: the source's last part "
        "without .safetensors, or NAME=; null: none); batches are grouped by LoRA",
    )
    p.add_argument(
        "--storage-options",
        type=json_object("--storage-options"),
        help='fsspec options for input and output, as JSON, e.g. \'{"client_kwargs": '
        '{"endpoint_url": "http://127.0.0.1:9000"}}\' (default: the standard environment, '
        "AWS_ENDPOINT_URL, AWS_PROFILE, ...); secrets never reach spec.json or logs",
    )
    p.add_argument(
        "--input-storage-options",
        type=json_object("--input-storage-options"),
        help="fsspec options for the input only, as JSON, on top of --storage-options; also used "
        "to read --model, --vae and --controlnet given as fsspec URLs",
    )
    p.add_argument(
        "--output-storage-options",
        type=json_object("--output-storage-options"),
        help="fsspec options for the output only, as JSON, on top of --storage-options",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        help="retries per shard after an infrastructure failure "
        "(worker or node death, lost objects, storage timeouts and 5xx), with backoff; bad data "
        "and bugs are never retried (default 3)",
    )
    p.add_argument(
        "--max-failed-shards",
        type=int,
        help="exit with code 1 when more shards than this "
        "failed; failed shards are recorded under _failed/ and retried by the next run (default 0)",
    )
    p.add_argument(
        "--overwrite",
        action="store_const",
        const=True,
        help="discard an existing output made with other inputs or options "
        "(an output of this same job is resumed, not discarded)",
    )
    plan = p.add_argument_group("planning a run (nothing is written to OUTPUT, no render actor starts)")
    plan.add_argument(
        "--dry-run",
        action="store_true",
        help="run every check a real run makes before work "
        "(inputs, columns, model configs, output, cluster resources), print the plan (rows, images, "
        "shards, workers) and an estimate of wall time and GPU-hours from the throughput table "
        "(jobs/estimate/throughput.json), naming each setting it has no measured figure for; exit 0, or 2 for a "
        "bad job",
    )
    plan.add_argument(
        "--calibrate",
        action="store_true",
        help="a dry run that also renders the job's first images "
        "on one worker of the cluster (a warm-up batch, then at least 3 batches and 5 s, measured), into "
        "a temporary folder on that worker's node (never OUTPUT), and estimates from the measured images/s",
    )
    plan.add_argument(
        "--gpu-hour-price",
        type=float,
        metavar="P",
        help="with --dry-run or --calibrate: the price of one GPU-hour, to print the estimated cost",
    )
    plan.add_argument(
        "--gpu-kind",
        metavar="NAME",
        help="with --dry-run: the GPU kind to estimate for, e.g. H200 or "
        "'NVIDIA A10G' (default: the cluster's GPU nodes' accelerator type, when it has some now); with "
        "--device cuda --workers N, plans for N workers of that kind even before the cluster exists",
    )
    return p


def parse_render_command(argv: list[str] | None, prog: str = "turbobatch render") -> tuple[JobSpec, RunOptions]:
    """Flags (and the YAML named by --config) -> a validated JobSpec and how to run it. Raises JobError."""
    args = vars(build_render_parser(prog).parse_args(argv))
    options = RunOptions(**{f.name: args.pop(f.name) for f in dataclasses.fields(RunOptions) if f.name in args})
    config_path = args.pop("config", None)
    yaml_values = _read_yaml(config_path) if config_path else {}
    flags = {k: v for k, v in args.items() if v is not None}
    try:
        spec = JobSpec.from_sources(yaml_values, flags)
    except MissingArgument as e:  # restate the usage with the command the user typed
        raise MissingArgument(e.name, prog) from None
    planning = options.dry_run or options.calibrate
    for flag, value in (("--gpu-hour-price", options.gpu_hour_price), ("--gpu-kind", options.gpu_kind)):
        if value is not None and not planning:
            raise JobError(f"{flag}: applies to --dry-run and --calibrate (the estimate); add one of them")
    price = options.gpu_hour_price
    if price is not None and (isinstance(price, bool) or not math.isfinite(price) or price < 0):
        raise JobError(f"--gpu-hour-price: {price!r} is not valid; expected a price of zero or more")
    if options.gpu_kind is not None and not options.gpu_kind.strip():
        raise JobError("--gpu-kind: empty; expected a GPU kind such as H200 or 'NVIDIA A10G'")
    return spec, options


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise JobError(f"--config: cannot read {path!r}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise JobError(f"--config: {path!r} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise JobError(f"--config: {path!r} must hold a mapping of field: value, not {type(values).__name__}")
    return values


def console_main() -> None:
    """The ``turbobatch`` command (pyproject's script) and ``python -m turbobatch``: ``main``, then an exit
    without teardown (exit_without_teardown), so the exit code is always the command's: 0 done, 1 failed shards,
    2 bad job, 130 Ctrl-C, 143 SIGTERM. Whatever ends ``main`` early keeps Python's meaning: ``sys.exit`` (argparse:
    --help 0, a bad flag 2) its code, an uncaught exception its traceback and 1."""
    exit_without_teardown(exit_code_of(main))


def render_main(argv: list[str] | None = None, prog: str = "turbobatch render") -> int:
    """Run the job and return its exit code: 0 done, 1 failed shards or stalled, 2 bad job, 130 Ctrl-C, 143 SIGTERM.

    SIGTERM is handled from the first line (jobs/run/signals.py sigterm_interrupts), so it gives 143 and the resume
    line in every step, and the driver ends within signals.TERMINATE_GRACE_S of it even if Ray's shutdown hangs."""
    with sigterm_interrupts():
        try:
            spec, options = parse_render_command(argv, prog)
            if options.dry_run or options.calibrate:
                return dry_run(spec, options)
            return render.run(spec)
        except JobError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_JOB
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (jobs/run/cluster.py); Ray is shut down by now
            if SIGTERM_RECEIVED.is_set():
                print(f"\n{TERMINATED_MESSAGE}", file=sys.stderr)
                return EXIT_TERMINATED
            print("\ninterrupted: committed shards are kept; run the same command again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED


COMMANDS = {
    "render": "render a Parquet prompt dataset into an image dataset on a Ray cluster; run the same command "
    "again to resume",
    "status": "show where a job stands (shards, images, failures, time per node), from its output folder alone",
    "verify": "check an output folder's committed shards against their done markers, and find orphans; "
    "--repair removes broken shards so the render command redoes them",
}


def build_main_parser(prog: str) -> argparse.ArgumentParser:
    """The top-level parser, for its help and usage text: each command parses its own arguments."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Render Parquet prompt datasets into image datasets on a "
        "Ray cluster, resumably, and inspect the output.",
        epilog=f"'{prog} COMMAND --help' lists a command's options.",
    )
    commands = p.add_subparsers(title="commands", metavar="COMMAND")
    for name, text in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``turbobatch`` entry point: the help (exit 0 when asked for, 2 when no command is given), or
    dispatch to a subcommand whose usage lines name the command as the user typed it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or invoked_as()
    parser = build_main_parser(prog)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command = {"render": render_main, "status": status.main, "verify": verify.main}[argv[0]]
    return command(argv[1:], prog=f"{prog} {argv[0]}")


if __name__ == "__main__":
    console_main()
