"""Saving scored images as PNGs whose text chunks carry the prompt and the SciScore values.

Keys: ``sciscore_prompt`` (the prompt scored against) and ``sciscore`` (JSON with score,
rank and model); inside ComfyUI also ``prompt`` / ``workflow`` as ComfyUI's SaveImage writes
them, so dragging the file back into ComfyUI restores the graph. Files are written to a
temporary name and renamed, so a crash never leaves a half-written PNG.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.files import atomic_path
from ..core.images import to_pil
from ..errors import ScienceT2IError


def _target_folder(output_dir: Path, prefix: str) -> tuple[Path, str]:
    """Split ``sub/dir/name`` into a folder inside ``output_dir`` and a file prefix."""
    prefix = prefix.strip() or "sciscore"
    rel = Path(prefix)
    folder = (output_dir / rel.parent).resolve()
    root = output_dir.resolve()
    if folder != root and root not in folder.parents:
        raise ScienceT2IError(
            f"filename_prefix {prefix!r} points outside the output folder {root}; use a "
            "relative name such as 'sciscore/apple'.")
    if not re.fullmatch(r"[\w.\- ]+", rel.name):
        raise ScienceT2IError(f"filename_prefix {prefix!r}: the file name part may only hold "
                              "letters, digits, spaces, '.', '_' and '-'.")
    return folder, rel.name


def _next_index(folder: Path, name: str) -> int:
    pat = re.compile(re.escape(name) + r"_(\d{5})\.png$")
    used = [int(m.group(1)) for p in folder.glob(f"{name}_*.png") if (m := pat.match(p.name))]
    return max(used, default=0) + 1


def save_scored_pngs(images: torch.Tensor | Sequence[torch.Tensor], prompts: list[str],
                     scores: list[float],
                     output_dir: Path, prefix: str = "sciscore", model_name: str = "",
                     extra_text: dict[str, Any] | None = None, compress_level: int = 4
                     ) -> list[Path]:
    """Write each [H,W,3] image of ``images`` (a batch, or a list of images of any sizes) as
    ``<prefix>_NNNNN.png``, ranked over all of them; returns the paths."""
    from PIL.PngImagePlugin import PngInfo
    n = len(images)
    if len(prompts) != n or len(scores) != n:
        raise ScienceT2IError(f"{n} images but {len(prompts)} prompts and {len(scores)} scores: "
                              "connect the scores computed for these images.")
    folder, name = _target_folder(output_dir, prefix)
    folder.mkdir(parents=True, exist_ok=True)
    order = sorted(range(n), key=lambda i: -scores[i])
    rank = {i: r + 1 for r, i in enumerate(order)}
    start = _next_index(folder, name)
    paths = []
    for i in range(n):
        info = PngInfo()
        info.add_text("sciscore_prompt", prompts[i])
        meta: dict[str, Any] = {"score": float(scores[i]), "rank": rank[i], "of": n}
        if model_name:  # unknown: left out rather than written empty
            meta["model"] = model_name
        info.add_text("sciscore", json.dumps(meta))
        for key, value in (extra_text or {}).items():
            info.add_text(key, value if isinstance(value, str) else json.dumps(value))
        buf = io.BytesIO()
        to_pil(images[i]).save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
        path = folder / f"{name}_{start + i:05d}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())
        paths.append(path)
    return paths
