"""``ask_scene``: one question about a whole raster, answered tile by tile and aggregated.

The scene is opened (`rsfuse.scene.reading`), cut into tiles (`rsfuse.scene.tiling`), and the tiles go through
`MFRSVLMProcessor.pack` (the question's prompt ids, tokenized once, with each tile's pixels) into one
`rsfuse.generation.GenerationSession` (the step-wise session the server drives) in batches of ``batch_size``
tiles: only one batch of tiles is ever in memory. Batch ``c`` is always tiles ``c·B .. c·B + B − 1`` of the plan, so
an interrupted run that resumes, or a run sharded under ``torchrun`` (batch ``c`` on rank ``c mod world_size``),
decodes every batch exactly as one uninterrupted process does. Sampled answers (``temperature > 0``) take the
per-request seed ``seed + tile index``, so they do not depend on batching either.

A tile that cannot be read is recorded as an error for that tile (the rest go on); a tile whose pixels are all
nodata is skipped (``nodata``). With ``out_dir`` the answers are resumable (`rsfuse.scene.store`) and the outputs
are written (`rsfuse.scene.outputs`).
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rsfuse.generation import GenerationSession, SamplingParams
from rsfuse.scene.aggregate import SceneBox, aggregate
from rsfuse.scene.answers import KINDS, infer_kind
from rsfuse.scene.reading import (
    DEFAULT_MAX_SCENE_PIXELS,
    DEFAULT_MAX_WINDOW_PIXELS,
    SceneError,
    SceneInfo,
    SceneRaster,
    file_sha256,
)
from rsfuse.scene.store import TileStore, clear_store
from rsfuse.scene.tiling import Tile, TilePlan, plan_tiles

__all__ = ["SceneResult", "ask_scene", "model_digest", "plan_scene"]

DEFAULT_OVERLAP = 0.25  # existence, grounding and free-form questions; counts are tiled without overlap


@dataclass
class SceneResult:
    """A scene's answers: the raster (`info`), its tiles (`plan`), one record per tile (``key``, ``index``,
    ``row``, ``col``, window ``x``/``y``/``width``/``height``, ``status`` answered / nodata / error, ``answer``,
    ``error``, ``parsed``), the scene's `summary`, the boxes in native pixels, and the files written."""

    question: str
    kind: str
    info: SceneInfo
    plan: TilePlan
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    boxes: list[SceneBox]
    files: dict[str, Path] = field(default_factory=dict)


def model_digest(model: torch.nn.Module) -> str:
    """A digest of the model's configuration and every parameter and buffer (what makes its answers)."""
    digest = hashlib.sha256(json.dumps(getattr(model.config, "to_dict", dict)(), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:32]}"


def _kind_of(question: str, kind: str | None) -> str:
    if not isinstance(question, str) or not question.strip():
        raise SceneError("question: a non-empty question is needed")
    kind = infer_kind(question) if kind is None else kind
    if kind not in KINDS:
        raise SceneError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return kind


def plan_scene(raster: SceneRaster, *, tile_size: int, kind: str, gsd: float | None = None,
               overlap: float | None = None) -> TilePlan:
    """The tiles of an open scene for a question of ``kind`` (``overlap`` None: 0 for counts, else 0.25)."""
    if overlap is None:
        overlap = 0.0 if kind == "count" else DEFAULT_OVERLAP
    return plan_tiles(raster.info, tile_size=tile_size, gsd=gsd, overlap=overlap)


def _record(tile: Tile, status: str, answer: str | None = None, error: str | None = None) -> dict[str, Any]:
    return {"key": tile.key, "index": tile.index, "row": tile.row, "col": tile.col, "x": tile.x, "y": tile.y,
            "width": tile.width, "height": tile.height, "status": status, "answer": answer, "error": error}


class _TileAnswerer:
    """Reads a batch of tiles and answers the readable, non-empty ones through one generation session."""

    def __init__(self, model, processor, raster: SceneRaster, plan: TilePlan, question: str, *, batch_size: int,
                 max_new_tokens: int, temperature: float, seed: int) -> None:
        self.model, self.processor, self.raster, self.plan = model, processor, raster, plan
        self.prompt = processor.prompt_ids(question, has_image=True)
        self.params = dict(max_new_tokens=max_new_tokens, temperature=temperature,
                           eos_token_ids=tuple(processor.eos_token_ids))
        self.seed = seed
        length = processor.sequence_length(self.prompt, has_image=True) + max_new_tokens
        try:
            self.session = GenerationSession(model, max_batch=batch_size, max_length=length,
                                             pad_token_id=processor.pad_token_id)
        except ValueError as error:
            raise SceneError(f"question: {error}") from None

    def tile_image(self, tile: Tile) -> tuple[Image.Image | None, str | None]:
        """``(image, None)``, ``(None, None)`` for an all-nodata tile, or ``(None, error)``."""
        size = self.plan.tile_size
        out_w = size if tile.width == self.plan.side else max(1, round(tile.width * size / self.plan.side))
        out_h = size if tile.height == self.plan.side else max(1, round(tile.height * size / self.plan.side))
        try:
            rgb, valid = self.raster.read(tile.x, tile.y, tile.width, tile.height, out_w, out_h)
        except SceneError as error:
            return None, str(error)
        if not valid.any():
            return None, None
        return Image.fromarray(rgb, "RGB"), None

    @torch.no_grad()
    def answer(self, tiles: list[Tile]) -> list[dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        images: list[tuple[Tile, Image.Image]] = []
        for tile in tiles:
            image, error = self.tile_image(tile)
            if error is not None:
                records[tile.index] = _record(tile, "error", error=error)
            elif image is None:
                records[tile.index] = _record(tile, "nodata")
            else:
                images.append((tile, image))
        if images:
            pixels = self.processor.preprocess_images([image for _, image in images])
            inputs = self.processor.pack([self.prompt] * len(images), list(pixels))
            inputs = inputs.to(self.model.device, self.model.dtype)
            params = [SamplingParams(**self.params, seed=self.seed + tile.index) for tile, _ in images]
            session = self.session
            session.reset()
            rows = session.add(**inputs, params=params)
            while True:
                session.poll()
                if session.all_done:
                    break
                session.step()
            texts = self.processor.batch_decode([session.tokens(row) for row in rows]) if rows else []
            for row in rows:
                session.release(row)
            for (tile, _), text in zip(images, texts):
                records[tile.index] = _record(tile, "answered", answer=text)
        return [records[tile.index] for tile in tiles]


def ask_scene(
    model,
    processor,
    path: str | os.PathLike,
    question: str,
    *,
    kind: str | None = None,
    gsd: float | None = None,
    tile_size: int | None = None,
    overlap: float | None = None,
    bands: tuple[int, int, int] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
    model_id: str | None = None,
    max_scene_pixels: int = DEFAULT_MAX_SCENE_PIXELS,
    max_window_pixels: int = DEFAULT_MAX_WINDOW_PIXELS,
    ranks=None,
    stop_after: int | None = None,
) -> SceneResult:
    """Answer ``question`` about the raster at ``path`` (see the module docstring).

    ``kind``: existence | count | grounding | free-form (None: `rsfuse.scene.answers.infer_kind`); ``gsd``: ground
    sample distance of the tiles in the CRS's units (None: native; pixels for a raster without georeferencing);
    ``tile_size``: model pixels a side (None: the processor's image size); ``overlap``: fraction of a tile (None: 0
    for counts, 0.25 otherwise); ``bands``: three 0-based bands (None: the colour interpretation). ``out_dir``:
    resumable answers and the output files; ``model_id``: what identifies the model in them (None: a digest of its
    weights). ``ranks``: an `rsfuse.eval.ranks.RankGroup` to share the tiles across processes. ``stop_after``:
    stop after that many batches (what an interruption looks like; the result then holds the finished tiles)."""
    from rsfuse.scene.outputs import write_outputs  # noqa: PLC0415

    kind = _kind_of(question, kind)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SceneError(f"batch_size must be a positive int, got {batch_size!r}")
    rank, world = (0, 1) if ranks is None else (ranks.rank, ranks.world_size)
    with SceneRaster(path, bands=bands, max_scene_pixels=max_scene_pixels,
                     max_window_pixels=max_window_pixels) as raster:
        info = raster.info
        plan = plan_scene(raster, tile_size=tile_size or processor.image_size, kind=kind, gsd=gsd, overlap=overlap)
        answerer = _TileAnswerer(model, processor, raster, plan, question, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        chunks = [list(plan.tiles[start:start + batch_size]) for start in range(0, len(plan.tiles), batch_size)]
        store = None
        if out_dir is not None:
            once = (lambda compute: compute()) if ranks is None else ranks.shared  # computed on rank 0 only
            identity = {
                "model": model_id or once(lambda: model_digest(model)),
                "question": question, "kind": kind, "prompt_ids": answerer.prompt,
                "raster": f"sha256:{once(lambda: file_sha256(path))}",
                "bands": list(info.bands), "stretch": info.stretch and [list(pair) for pair in info.stretch],
                "tiling": plan.identity(), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                "temperature": temperature, "seed": seed if temperature > 0 else None,
            }
            if overwrite and rank == 0:
                clear_store(Path(out_dir))
            if ranks is not None:
                ranks.gather(None)  # the old files are gone before any rank reads
            store = TileStore(out_dir, json.loads(json.dumps(identity)), rank=rank, world_size=world)
        done = dict(store.done) if store is not None else {}
        mine = [c for c in range(len(chunks)) if c % world == rank and c not in done]
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(plan.tiles), initial=sum(len(chunks[c]) for c in done), unit="tile",
                   disable=not progress or rank != 0, desc="scene")

        def answer_mine() -> None:
            for number, chunk in enumerate(mine):
                if stop_after is not None and number >= stop_after:
                    break
                records = answerer.answer(chunks[chunk])
                if store is not None:
                    store.write(chunk, records)
                done[chunk] = records
                bar.update(len(records) * world)

        try:
            if ranks is None:
                answer_mine()
            else:  # an error on one rank stops every rank (none waits for it at the gather)
                from rsfuse.eval.ranks import capture, picklable  # noqa: PLC0415

                _, error = capture(answer_mine)
                errors = ranks.gather(picklable(error))
                errors[rank] = error  # this rank raises its own error as it is
                ranks.raise_first(errors)
        finally:
            bar.close()
            if store is not None:
                store.close()
        if ranks is not None:
            merged: dict[int, list] = {}
            for part in ranks.gather(done):
                merged.update(part)
            done = merged
        records = [record for chunk in sorted(done) for record in done[chunk]]
        summary, boxes = aggregate(records, kind, overlap=plan.overlap)
        summary.update(question=question, complete=len(done) == len(chunks))
        result = SceneResult(question=question, kind=kind, info=info, plan=plan, records=records, summary=summary,
                             boxes=boxes)
        if out_dir is not None and rank == 0:
            result.files = write_outputs(result, raster, Path(out_dir))
    return result


def time_one_batch(model, processor, raster: SceneRaster, plan: TilePlan, question: str, *, batch_size: int,
                   max_new_tokens: int) -> float | None:
    """Seconds per tile of one batch of the scene's first tiles (the dry run's estimate), None without tiles."""
    answerer = _TileAnswerer(model, processor, raster, plan, question, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    tiles = list(plan.tiles[:batch_size])
    if not tiles:
        return None
    start = time.perf_counter()
    answerer.answer(tiles)
    return (time.perf_counter() - start) / len(tiles)
