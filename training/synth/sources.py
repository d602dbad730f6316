"""The image of each problem, from ImgCoder, a FLUX pipeline, a ComfyUI workflow or a folder,
as ``<out>/images/<record id>.png``, with where it came from (generator, seed, the figure's
code). Resumable: an image on disk is kept, each is written atomically."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ...nodes.errors import ScienceT2IError
from ..core.seeds import seed_for
from ..eval.scigen.data import find_generated

log = logging.getLogger(__name__)

SYNTH_PURPOSE = 29   # the seed stream of synthetic data, apart from the benchmark's


@dataclass(frozen=True)
class Drawn:
    """A record's image (None: not made) and its provenance."""
    path: Path | None
    generator: str
    seed: int | None = None
    code: str | None = None
    error: str | None = None


def draw_records(records: Sequence[Any], images_dir: Path, source: str, make: Any, *,
                 seed: int = 0, name: str = "") -> dict[str, Drawn]:
    """Images for ``records`` (SciGenRecord) by ``source``:
    - "imgcoder": ``make`` is ``(problems, out) -> counts`` (ImgCoder's batch run);
    - "flux" / "comfyui": ``make`` is ``(jobs) -> None`` drawing (target, prompt, seed) jobs;
    - "folder": ``make`` is the folder of ``<id>.png`` images already made.
    ``name`` says which model or workflow, for the provenance."""
    images_dir = Path(images_dir)
    if source == "folder":
        return {r.id: _found(find_generated(Path(make), r.id), f"folder:{Path(make).name}")
                for r in records}
    images_dir.mkdir(parents=True, exist_ok=True)
    if source == "imgcoder":
        from ..generate.imgcoder import Problem
        make([Problem(r.id, r.text, r.image_type if r.image_type != "-" else "")
              for r in records], images_dir)
        return _imgcoder_results(records, images_dir, f"imgcoder:{name}")
    if source not in ("flux", "comfyui"):
        raise ScienceT2IError(f"unknown image source {source!r}.")
    seeds = {r.id: seed_for(seed, SYNTH_PURPOSE, r.index) for r in records}
    todo = [(images_dir / f"{r.id}.png", r.text, seeds[r.id]) for r in records
            if not (images_dir / f"{r.id}.png").is_file()]
    log.info("synth-data: %d of %d images to draw with %s", len(todo), len(records), source)
    if todo:
        make(todo)
    return {r.id: _found(images_dir / f"{r.id}.png", f"{source}:{name}", seeds[r.id])
            for r in records}


def _found(path: Path | None, generator: str, seed: int | None = None) -> Drawn:
    if path is None or not Path(path).is_file():
        return Drawn(None, generator, seed, error="no image was made")
    return Drawn(Path(path), generator, seed)


def _imgcoder_results(records: Sequence[Any], out: Path, generator: str) -> dict[str, Drawn]:
    """ImgCoder's figures with their code; the last error of each figure not drawn."""
    errors: dict[str, str] = {}
    log_file = out / "imgcoder.jsonl"
    if log_file.is_file():
        for line in log_file.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not entry.get("ok"):
                errors[str(entry.get("id"))] = str(entry.get("error") or "failed")
    drawn = {}
    for r in records:
        png, code = out / f"{r.id}.png", out / "codes" / f"{r.id}.py"
        text = code.read_text(encoding="utf-8") if code.is_file() else None
        if png.is_file():
            drawn[r.id] = Drawn(png, generator, None, text)
        else:
            drawn[r.id] = Drawn(None, generator, None, text, errors.get(r.id, "not drawn"))
    return drawn
