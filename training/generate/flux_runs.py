"""A text-to-image run for the Science-T2I benchmark from a diffusers FLUX pipeline: the
implicit, explicit and superficial prompt of every record, k samples each with fixed seeds,
into ``RUN/{ip,ep,sp}/<record index>_<k>.png``, the layout ``eval-t2i`` reads.

Several processes (``accelerate launch``, one per GPU) share the plan. Resumable: an image
already on disk is kept (each is written to a temporary file and renamed,
so a killed run leaves no half image). Seeds depend only on (seed, record, kind, sample), so a
resumed or re-ordered run draws the same images.

``REFERENCE`` holds the reference evaluation's generation settings (FLUX.1-schnell, 4 steps,
512 px, guidance 4, T5 sequence length 256, one sample per prompt); ``PACK`` the pack's
defaults for FLUX.1-dev (28 steps, guidance 3.5, sequence length 512).
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ...nodes import _comfy
from ...nodes.core import write_bytes_atomic
from ...nodes.errors import ScienceT2IError
from ..core.seeds import seed_for

log = logging.getLogger(__name__)

KIND_FIELDS = {"ip": "implicit_prompts", "ep": "explicit_prompts", "sp": "superficial_prompts"}
KIND_CODES = {"ip": 0, "ep": 1, "sp": 2}


@dataclass(frozen=True)
class GenerationSettings:
    steps: int = 28
    resolution: int = 512
    guidance: float = 3.5
    max_sequence_length: int = 512
    samples: int = 1
    seed: int = 0


REFERENCE = GenerationSettings(steps=4, resolution=512, guidance=4.0, max_sequence_length=256,
                               samples=1)
PACK = GenerationSettings()
PRESETS = {"reference": REFERENCE, "pack": PACK}


def settings_for(preset: str, **changes: Any) -> GenerationSettings:
    """The preset's settings with the changes given (None = keep the preset's)."""
    if preset not in PRESETS:
        raise ScienceT2IError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}.")
    s = replace(PRESETS[preset], **{k: v for k, v in changes.items() if v is not None})
    for name in ("steps", "resolution", "samples", "max_sequence_length"):
        if getattr(s, name) < 1:
            raise ScienceT2IError(f"{name} must be >= 1; got {getattr(s, name)}.")
    if s.resolution % 16:
        raise ScienceT2IError(f"resolution must be a multiple of 16 (FLUX packs 2x2 latents "
                              f"of an 8x VAE); got {s.resolution}.")
    return s


def planned_images(records: Sequence[Any], samples: int) -> list[tuple[str, Any, int, str]]:
    """(kind, record, sample, prompt) of every image of the run; records without a prompt of
    a kind are left out of that kind."""
    plan = []
    for kind, field in KIND_FIELDS.items():
        for rec in records:
            prompts = getattr(rec, field)
            if prompts:
                plan += [(kind, rec, k, prompts[0]) for k in range(samples)]
    if not plan:
        raise ScienceT2IError("the records have no implicit, explicit or superficial prompts "
                              "to generate from.")
    return plan


def load_flux_pipeline(path: str, device: Any, dtype: Any, lora: str | None = None,
                       base: str = "bf16") -> Any:
    """A diffusers FluxPipeline (dev or schnell) from a folder or Hub id, with a LoRA, its
    transformer quantized to ``base`` (as ``flux.quantize.resolve_base`` names it)."""
    from diffusers import FluxPipeline

    from ..flux.model import resolve_flux_dir
    from ..flux.quantize import quantize_transformer
    folder = resolve_flux_dir(path)
    pipe = FluxPipeline.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True)
    if lora:
        if not Path(lora).is_file():
            raise ScienceT2IError(f"--lora file not found: {lora}")
        pipe.load_lora_weights(str(lora))
        if base != "bf16":
            pipe.fuse_lora()            # into the full weights, before they are quantized
            pipe.unload_lora_weights()
    quantize_transformer(pipe.transformer, base)   # on the CPU, before the move
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def draw_images(pipe: Any, jobs: Sequence[tuple[Path, str, int]],
                settings: GenerationSettings, batch_size: int = 1) -> None:
    """Draw each (target file, prompt, seed) with the pipeline, written atomically as PNG."""
    import torch
    with _comfy.Progress(len(jobs), desc="generate") as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            images = pipe([prompt for _, prompt, _ in chunk], height=settings.resolution,
                          width=settings.resolution, num_inference_steps=settings.steps,
                          guidance_scale=settings.guidance,
                          max_sequence_length=settings.max_sequence_length,
                          generator=[torch.Generator().manual_seed(seed)
                                     for _, _, seed in chunk]).images
            for (target, _, _), image in zip(chunk, images):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                write_bytes_atomic(target, buffer.getvalue())
            bar.update(len(chunk))
            _comfy.check_interrupt()


def generate_run(pipe: Any, records: Sequence[Any], run_dir: str | Path,
                 settings: GenerationSettings, batch_size: int = 1,
                 process: Any = None) -> dict:
    """Generate what is missing of the run (see the module doc); returns the run's counts.
    ``process`` (accelerate's PartialState of a multi-process launch): each process draws
    every n-th image of the plan; the images do not depend on which process draws them."""
    run_dir = Path(run_dir)
    plan = planned_images(records, settings.samples)
    todo = [p for p in plan if not (run_dir / p[0] / f"{p[1].index}_{p[2]}.png").is_file()]
    counts = {"planned": len(plan), "generated": len(todo), "kept": len(plan) - len(todo)}
    for kind in KIND_FIELDS:
        (run_dir / kind).mkdir(parents=True, exist_ok=True)
    if process is not None:
        process.wait_for_everyone()     # every process has listed the run before any writes
        mine = set(map(id, plan[process.process_index::process.num_processes]))
        todo = [p for p in todo if id(p) in mine]
    if process is None or process.is_main_process:
        write_bytes_atomic(run_dir / "generation.json",
                           json.dumps(asdict(settings), indent=1).encode())
    log.info("run %s: %d images planned, %d already there, %d drawn here", run_dir, len(plan),
             counts["kept"], len(todo))
    draw_images(pipe, [(run_dir / kind / f"{rec.index}_{k}.png", prompt,
                        seed_for(settings.seed, rec.index, KIND_CODES[kind], k))
                       for kind, rec, k, prompt in todo], settings, batch_size)
    if process is not None:
        process.wait_for_everyone()     # the whole run is on disk before anyone scores it
    return counts
