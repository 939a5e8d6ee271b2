"""Render validated rows in batches: sample (workers/sampler.py), decode (workers/decode.py),
copy the uint8 images out; a failing batch costs only its failing rows.

Every device batches ``--batch-size`` rows (images) per call. A call never mixes sampling
parameters: rows are grouped by (height, width, steps, guidance scale), groups in order of their
first row, rows in their given order within a group, so the grouping (and with it every batch)
is the same on a rerun. A row's image is within 1 level (of 255) of a plain diffusers call for
its prompt, seed and parameters at any batch size (its noise comes from its own generator; only
the kernels' summation order depends on the batch), and the same job rerun on the same machine
gives the same bytes.

On CUDA a batch is queued from prompt to uint8 image without a host synchronisation; with
``overlap`` the next batch is queued (its tokenizing and kernel launches run on the host) while
the device still works on the current one, whose results are then copied out. With
``pad_batches`` (compiled models: a new shape would compile again) a short last batch is filled
up to the batch size with copies of its last row, whose images are dropped.

A batch that raises is not the shard's end: on GPU out-of-memory the batch is halved (down to
one row, and the smaller size is kept), on any other exception it is rendered again row by row,
so only the row that raises fails; it comes back as its ``Row`` with ``error`` set.

With a ``Stager`` (workers/staging.py: a card too small for the whole pipeline) ``render`` first
encodes every batch's prompts, keeps the embeddings in host memory and moves the text encoder off
the device; the batches then denoise from those embeddings. A batch made anew by the recovery
(halved, row by row) has none cached and is encoded with the encoder brought back for it, as
without staging: the images are the same bytes either way.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from turbobatch import faults
from turbobatch.spec.resolved import ResolvedJob
from turbobatch.spec.sampling import SamplingParams
from turbobatch.workers.decode import Decoded, Decoder
from turbobatch.workers.row_inputs import batch_variant
from turbobatch.workers.rows import Row
from turbobatch.workers.sampler import Conditioning, TurboSampler
from turbobatch.workers.staging import Stager, moved


@dataclass
class Rendered:
    row: Row
    image: np.ndarray  # uint8 HWC
    render_ms: float
    truncated: bool
    redecoded_fp32: bool = False  # the fp16 decode gave NaN/Inf, so this image was decoded in float32
    batch_size: int = 1  # rows in the pipeline call that made this image
    nan_count: int | None = None  # NaN/Inf values in the float decode of this image (after any float32 redo)
    mean: float | None = None  # of the uint8 image, all channels, 0..255
    std: float | None = None  # population std of the uint8 image, 0..255
    dhash: str | None = None  # kernels.dhash64 of the uint8 image, 16 lowercase hex digits (None below 8x9)


@dataclass
class _Queued:
    """A batch whose work is queued on the device; its results land in ``host`` once ``done``."""

    rows: list[Row]
    calls: int  # rows in the call (more than len(rows) when padded)
    latents: torch.Tensor
    truncated: list[bool]
    host: list[np.ndarray]  # images, nonfinite, mean, std[, hashes]; valid after done.synchronize()
    done: Any  # torch.cuda.Event, or None on CPU (results already there)
    started: float


class PipelineRenderer:
    def __init__(
        self,
        pipe: Any,
        spec: ResolvedJob,
        device: str,
        overlap: bool = True,
        pad_batches: bool = False,
        loras: Any = None,
        stager: Stager | None = None,
    ) -> None:
        self.pipe, self.spec = pipe, spec
        self.device = torch.device(device)
        self.sampler = TurboSampler(pipe, spec, self.device)
        self.decoder = Decoder(pipe, self.sampler.family)
        self.rows_per_call = spec.batch_size
        self.in_flight = 2 if overlap else 1
        self.pad_batches = pad_batches
        self.loras = loras  # --lora-column: switches adapters between batches (models/lora.py)
        self._last_done = 0.0  # when the caller was done with the previous batch's results (per-batch time)
        self.stager = stager  # staging: encode the shard's prompts first (workers/staging.py)
        self._encoded: dict[Hashable, Conditioning] = {}  # staged batches' embeddings, in host memory

    def render(self, rows: list[Row]) -> Iterator[Rendered | Row]:
        """Render valid rows, group by group (``groups``); yields a ``Rendered`` per row, or the
        ``Row`` itself with ``error`` set when the pipeline raised on it."""
        if self.stager is not None:
            self._encode_all(rows)
        try:
            yield from self._render(rows)
        finally:
            self._encoded.clear()

    def _render(self, rows: list[Row]) -> Iterator[Rendered | Row]:
        queued: deque[_Queued] = deque()
        for batch in self._batches(rows):
            try:
                queued.append(self._queue(batch))
            except Exception as e:  # noqa: BLE001 - recovered below (or re-raised there)
                while queued:
                    yield from self._hand_out(self._finish_or_recover(queued.popleft()))
                yield from self._hand_out(self._recover(batch, e))
                continue
            if len(queued) >= self.in_flight:
                yield from self._hand_out(self._finish_or_recover(queued.popleft()))
        while queued:
            yield from self._hand_out(self._finish_or_recover(queued.popleft()))

    def _hand_out(self, results: list[Rendered | Row]) -> Iterator[Rendered | Row]:
        """Yield a batch's results; the time the caller keeps them (encode queue, records) is not
        the next batch's render time, so the per-batch clock restarts when the caller is back."""
        yield from results
        self._last_done = time.perf_counter()

    def _batches(self, rows: list[Row]) -> Iterator[list[Row]]:
        """Calls of at most ``rows_per_call`` rows (read as it goes: an OOM may lower it), one
        parameter group at a time."""
        for group in groups(rows, self.sampler.params, self.sampler.family.img2img_start).values():
            start = 0
            while start < len(group):
                batch = group[start : start + self.rows_per_call]
                start += len(batch)
                yield batch

    # -- staging -----------------------------------------------------------------------
    def _encode_all(self, rows: list[Row]) -> None:
        """Every batch's prompts through the text encoder, then the encoder off the device. A batch
        whose encoding raises is left to ``_queue`` (and so to the usual recovery)."""
        self.stager.encoder_to_device()
        for batch in self._batches(rows):
            padded, params = self._padded(batch), batch[0].params or self.sampler.params
            try:
                if self.loras is not None:
                    self.loras.activate(batch[0].lora)
                cond = self.sampler.encode([r.prompt for r in padded], self._negatives(padded), params)
            except Exception:  # noqa: BLE001 - encoded again in _queue, where it fails as it would unstaged
                continue
            self._encoded[_key(padded, params)] = moved(cond, "cpu")
        self.stager.encoder_away()

    @contextlib.contextmanager
    def _encoder_here(self) -> Iterator[None]:
        """The text encoder on the device for one batch that has no cached embeddings."""
        if self.stager is None:
            yield
            return
        self.stager.encoder_to_device()
        try:
            yield
        finally:
            self.stager.encoder_away()

    # -- one batch ---------------------------------------------------------------------
    def _padded(self, rows: list[Row]) -> list[Row]:
        return rows + [rows[-1]] * (self.rows_per_call - len(rows)) if self.pad_batches else rows

    def _negatives(self, padded: list[Row]) -> list[str] | None:
        return [r.negative_prompt or "" for r in padded] if self.spec.negative_prompt_column else None

    @torch.inference_mode()
    def _queue(self, rows: list[Row]) -> _Queued:
        """Sample, decode and start the copy of the results to the host; nothing waits here."""
        started = time.perf_counter()
        padded = self._padded(rows)
        faults.before_pipeline_call([r.prompt for r in padded])  # test-only; a no-op unless configured
        negatives = self._negatives(padded)
        controls = [r.control_image for r in padded] if self.spec.controlnet else None
        params = rows[0].params or self.sampler.params  # one group per call (_batches, _recover keep it so)
        # img2img (keywords only when used: the sampler's other callers and fakes keep their signature)
        init = (
            {"init_images": [r.init_image for r in padded], "strength": rows[0].strength}
            if self.spec.init_image_column
            else {}
        )
        if self.loras is not None:
            self.loras.activate(rows[0].lora)  # one LoRA per call, like the parameters
        seeds = [r.seed for r in padded]
        cond = self._encoded.pop(_key(padded, params), None)
        if cond is not None:  # staged: encoded before the shard's first batch
            latents = self.sampler.denoise(moved(cond, self.device), seeds, controls, params, **init)
            truncated = cond.truncated
        else:
            with self._encoder_here():
                latents, truncated = self.sampler.sample(
                    [r.prompt for r in padded], negatives, seeds, controls, params, **init
                )
        host, done = self._copy_out(self.decoder.decode(latents))
        return _Queued(rows, len(padded), latents, truncated, host, done, started)

    def _finish(self, q: _Queued) -> list[Rendered]:
        """Wait for a queued batch's results; decode again in float32 the images that need it."""
        if q.done is not None:
            q.done.synchronize()
        images, nonfinite, mean, std, *hashes = q.host
        redone = np.zeros(len(images), dtype=bool)
        if self.decoder.may_need_fp32 and nonfinite[: len(q.rows)].any():
            redone[: len(q.rows)] = nonfinite[: len(q.rows)] > 0
            fixed = self._wait(self.decoder.redecode_fp32(q.latents[torch.from_numpy(redone).to(q.latents.device)]))
            for mine, theirs in zip(q.host, fixed):  # images, nonfinite, mean, std[, hashes]
                mine[redone] = theirs
        now = time.perf_counter()
        ms = (now - max(q.started, self._last_done)) * 1000 / len(q.rows)
        self._last_done = now
        hexes = [f"{int(h) & 0xFFFF_FFFF_FFFF_FFFF:016x}" for h in hashes[0]] if hashes else [None] * len(images)
        return [
            Rendered(
                r,
                images[i],
                ms,
                q.truncated[i],
                bool(redone[i]),
                q.calls,
                nan_count=int(nonfinite[i]),
                mean=float(mean[i]),
                std=float(std[i]),
                dhash=hexes[i],
            )
            for i, r in enumerate(q.rows)
        ]

    def _copy_out(self, decoded: Decoded) -> tuple[list[np.ndarray], Any]:
        """Results to host memory. CUDA: asynchronous copies into pinned buffers and an event to
        wait on (the arrays are views of those buffers, so they live as long as the images)."""
        tensors = decoded.tensors()
        if self.device.type != "cuda":
            return [t.numpy() for t in tensors], None
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for dst, src in zip(host, tensors):
            dst.copy_(src, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return [h.numpy() for h in host], done

    def _wait(self, decoded: Decoded) -> list[np.ndarray]:
        host, done = self._copy_out(decoded)
        if done is not None:
            done.synchronize()
        return host

    # -- failures ----------------------------------------------------------------------
    def _finish_or_recover(self, q: _Queued) -> list[Rendered | Row]:
        try:
            return self._finish(q)
        except Exception as e:  # noqa: BLE001 - recovered (or re-raised) there
            return self._recover(q.rows, e)

    def _render_now(self, rows: list[Row]) -> list[Rendered | Row]:
        try:
            return self._finish(self._queue(rows))
        except Exception as e:  # noqa: BLE001
            return self._recover(rows, e)

    def _recover(self, rows: list[Row], e: Exception) -> list[Rendered | Row]:
        """OOM: halve the batch (keeping the smaller size); otherwise row by row, so that only the
        row that raises fails. OOM at one row re-raises: the shard fails."""
        if isinstance(e, torch.OutOfMemoryError):
            if len(rows) == 1:
                raise e
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            size = self.rows_per_call
            while size >= len(rows):  # halve (8 -> 4 -> 2 -> 1) until below the call that failed
                size //= 2
            self.rows_per_call = size
            return [result for i in range(0, len(rows), size) for result in self._render_now(rows[i : i + size])]
        if len(rows) == 1:
            rows[0].error = f"pipeline raised {type(e).__name__}: {e}"[:2000]
            return [rows[0]]
        return [result for row in rows for result in self._render_now([row])]


def _key(padded: list[Row], params: SamplingParams) -> Hashable:
    """A batch's cache key: its rows (the same objects in both passes of one ``render``) and parameters."""
    return (tuple(id(r) for r in padded), params)


def groups(
    rows: list[Row], default: SamplingParams, img2img_start: Callable[[int, float], int]
) -> dict[tuple[Any, ...], list[Row]]:
    """Rows by the parameters they sample with (None: ``default``) and their img2img start step (by
    the family's rule, ``img2img_start``) and LoRA (workers/row_inputs.batch_variant), in order of
    each group's first row, each group in the rows' order: what may share a pipeline call."""
    grouped: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        params = row.params or default
        grouped.setdefault((params, *batch_variant(row, params, img2img_start)), []).append(row)
    return grouped
