"""A small Science-T2I-format dataset drawn procedurally, for training tests.

Three phenomena whose explicit and superficial outcomes differ visibly:
- ripeness: a green fruit vs a red fruit;
- buoyancy: an object floating at the water surface vs lying on the tank floor;
- electricity: a laptop with a lit screen vs a dark one.
Each phenomenon has two implicit prompts with OPPOSITE outcomes ("an unripe tomato" -> green,
"a ripe tomato" -> red), so a model that ignores the text scores exactly chance on a balanced
set and must read the prompt to do better. Positions, sizes, colours and backgrounds are
jittered per image, so held-out records are new pictures.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

GREEN, RED = "green", "red"
FLOAT, SINK = "float", "sink"
LIT, DARK = "lit", "dark"

# (implicit prompts, explicit prompts, superficial prompts, explicit look, superficial look,
#  category, task)
KINDS = [
    (["an unripe tomato on a table", "a tomato that is not ripe yet"],
     ["a green tomato on a table"], ["a red tomato on a table"], GREEN, RED, "biology", "RI"),
    (["a ripe tomato on a table", "a fully ripened tomato"],
     ["a red tomato on a table"], ["a green tomato on a table"], RED, GREEN, "biology", "RI"),
    (["a wooden block dropped into a tank of water", "a cork in a water tank"],
     ["a block floating on the water surface"], ["a block lying on the bottom of the tank"],
     FLOAT, SINK, "physics", "BU"),
    (["an iron ball dropped into a tank of water", "a stone in a water tank"],
     ["a ball resting on the bottom of the tank"], ["a ball floating on the water surface"],
     SINK, FLOAT, "physics", "BU"),
    (["a laptop without electricity", "a laptop whose battery is completely dead"],
     ["a laptop with a blank black screen"], ["a laptop with a bright glowing screen"],
     DARK, LIT, "physics", "EL"),
    (["a laptop plugged in and switched on", "a laptop running on full power"],
     ["a laptop with a bright glowing screen"], ["a laptop with a blank black screen"],
     LIT, DARK, "physics", "EL"),
]


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int = 25) -> tuple:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def draw_scene(look: str, rng: random.Random, size: int = 40) -> Image.Image:
    bg = _jitter(rng, (200, 190, 170), 35)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    if look in (GREEN, RED):
        r = rng.randint(size // 6, size // 4)
        cx, cy = rng.randint(r + 1, size - r - 2), rng.randint(r + 1, size - r - 2)
        col = _jitter(rng, (50, 170, 40) if look == GREEN else (200, 35, 30))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        d.rectangle([cx - 1, cy - r - 3, cx + 1, cy - r], fill=_jitter(rng, (60, 110, 40)))
    elif look in (FLOAT, SINK):
        top = rng.randint(size // 4, size // 3)
        d.rectangle([2, top, size - 3, size - 3], fill=_jitter(rng, (60, 110, 200)))
        s = rng.randint(size // 7, size // 5)
        x = rng.randint(4, size - s - 5)
        y = top - s // 2 if look == FLOAT else size - 4 - s
        d.rectangle([x, y, x + s, y + s], fill=_jitter(rng, (140, 90, 40)))
    else:
        w, h = rng.randint(size // 2, size - 8), rng.randint(size // 3, size // 2)
        x0, y0 = rng.randint(2, size - w - 3), rng.randint(2, size - h - 8)
        d.rectangle([x0, y0, x0 + w, y0 + h], fill=_jitter(rng, (70, 70, 75), 10))
        screen = (235, 240, 255) if look == LIT else (10, 10, 12)
        d.rectangle([x0 + 2, y0 + 2, x0 + w - 2, y0 + h - 2], fill=_jitter(rng, screen, 15))
        d.rectangle([x0 - 2, y0 + h + 1, x0 + w + 2, y0 + h + 4],
                    fill=_jitter(rng, (90, 90, 95), 10))
    return img


def science_records(n_per_kind: int, seed: int, images_per_side: int = 2,
                    size: int = 40) -> list[dict]:
    """Records in the released dataset's field names, with PIL images (for
    ``write_jsonl_dataset``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_per_kind):
        for ip, ep, sp, look_exp, look_sup, category, law in KINDS:
            out.append({
                "implicit_prompt": list(ip), "explicit_prompt": list(ep),
                "superficial_prompt": list(sp),
                "explicit_image": [draw_scene(look_exp, rng, size)
                                   for _ in range(images_per_side)],
                "superficial_image": [draw_scene(look_sup, rng, size)
                                      for _ in range(images_per_side)],
                "category": category, "law": law,
            })
    return out


def write_science_dataset(folder: str | Path, n_per_kind: int, seed: int, **kw) -> Path:
    """Write the records as a JSONL dataset folder (data.jsonl + images/, paths relative to
    the folder, the layout ``write_jsonl_dataset`` produces); returns the folder.

    Written directly rather than through the atomic writer: hundreds of fsyncs would dominate
    the test time, and a test fixture has nothing to protect."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, rec in enumerate(science_records(n_per_kind, seed, **kw)):
        for name in ("explicit_image", "superficial_image"):
            paths = []
            for k, img in enumerate(rec[name]):
                rel = f"images/{i:05d}_{name}_{k}.png"
                img.save(folder / rel)
                paths.append(rel)
            rec[name] = paths
        lines.append(json.dumps(rec))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
