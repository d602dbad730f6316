"""``science-t2i score IMAGE... --prompt TEXT``: rank image files by SciScore."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...nodes.errors import ScienceT2IError

ONEDNN = {"auto": "auto", "on": True, "off": False}  # --onednn -> load_sciscore's onednn
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def register(subparsers: argparse._SubParsersAction) -> None:
    from ...nodes.sciscore import DEFAULT_SCISCORE
    p = subparsers.add_parser(
        "score", help="score and rank images by SciScore (scientific realism)",
        description="Score images against one prompt (or one --prompt per image) with SciScore "
                    "and print them ranked, best first. Folders are expanded to their images.")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--prompt", action="append", required=True,
                   help="the prompt; repeat it to give one prompt per image")
    p.add_argument("--model", default=DEFAULT_SCISCORE,
                   help=f"folder in models/sciscore, a path, or a hub id (default {DEFAULT_SCISCORE})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--preprocess", default="exact", choices=["exact", "fast"],
                   help="exact (default): the pixels SciScore's own processor computes, as in "
                        "the paper; fast: one float resize (scores about 1e-3 off)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--onednn", default="auto", choices=sorted(ONEDNN),
                   help="fp32 on CPU: run the towers through oneDNN's fused kernels where they "
                        "are faster than PyTorch's own forward (auto, the default: decided by "
                        "the CPU and a quick measurement, logged), always (on) or never (off)")
    p.add_argument("--no-onednn", dest="onednn", action="store_const", const="off",
                   help="same as --onednn off")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def collect_images(args: list[str]) -> list[Path]:
    paths: list[Path] = []
    for a in args:
        p = Path(a).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ScienceT2IError(f"folder {p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise ScienceT2IError(f"image not found: {p}")
    return paths


def read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    from ...nodes.core import from_pil
    try:
        with Image.open(path) as img:
            return from_pil(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise ScienceT2IError(f"cannot read image {path} ({exc}); is it a complete image "
                              "file?") from exc


def run(args: argparse.Namespace) -> int:
    from ...nodes.sciscore import (load_sciscore, parse_prompts, preference_probabilities,
                                   rank_order)
    from ..core.preflight import check_device
    check_device(args.device)
    paths = collect_images(args.images)
    prompts = parse_prompts(args.prompt if len(args.prompt) > 1 else args.prompt[0], len(paths))
    images = [read_image(p) for p in paths]
    model = load_sciscore(args.model, device=args.device, dtype=args.dtype,
                          batch_size=args.batch_size, onednn=ONEDNN[args.onednn],
                          preprocess=args.preprocess)
    scores = model.score(images, prompts)
    single_prompt = len(set(prompts)) == 1
    probs = preference_probabilities(scores).tolist() if single_prompt else [None] * len(paths)
    rows = [{"rank": r, "image": str(paths[i]), "score": float(scores[i]),
             "probability": probs[i], "prompt": prompts[i],
             "dropped_tokens": model.dropped_tokens.get(prompts[i], 0)}
            for r, i in enumerate(rank_order(scores), 1)]
    if args.json:
        print(json.dumps({"model": str(args.model), "results": rows}, indent=2))
        return 0
    width = max(len(r["image"]) for r in rows)
    head = f"{'rank':>4}  {'score':>8}  {'prob':>6}  {'image':<{width}}"
    print(head + ("" if single_prompt else "  prompt"))
    for r in rows:
        prob = f"{r['probability']:6.3f}" if r["probability"] is not None else f"{'-':>6}"
        line = f"{r['rank']:>4}  {r['score']:8.3f}  {prob}  {r['image']:<{width}}"
        print(line + ("" if single_prompt else f"  {r['prompt']}"))
    if single_prompt:
        print(f"prompt: {prompts[0]}")
    for line in model.truncation_lines(prompts):
        print(line)
    return 0
