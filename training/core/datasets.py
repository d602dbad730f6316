"""Science-T2I data from a local folder, whatever the on-disk format, as one record type.

Supported layouts (all read with pyarrow / the standard library; the ``datasets`` package is
not needed to read them):

- a ``datasets`` ``save_to_disk`` folder: a DatasetDict (``dataset_dict.json`` + one folder per
  split) or a single Dataset (``state.json`` + ``*.arrow`` shards);
- parquet: one ``.parquet`` file, or a folder of shards. The split of a shard comes from its name
  (``test-00000-of-00002.parquet``, ``test.parquet``) or from the folder holding it
  (``test/0000.parquet``, the Hub's converted layout); a ``data/`` folder is transparent;
- JSON (a list of objects) or JSONL, as one file or a folder of them (split = file stem).
  Image fields hold paths relative to the JSON file (one path or a list of paths).

Record fields follow the released datasets: implicit_prompt, explicit_prompt,
superficial_prompt (a string or a list), explicit_image, superficial_image (an image or a
list), category, law (the task code, e.g. "RI").
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ...nodes.errors import ScienceT2IError
from .preflight import TRAINING_EXTRA
from .readers import parse_json, read_json, read_text

PROMPT_FIELDS = ("implicit_prompt", "explicit_prompt", "superficial_prompt")
IMAGE_FIELDS = ("explicit_image", "superficial_image")
TEXT_FIELDS = ("category", "law")
KNOWN_FIELDS = PROMPT_FIELDS + IMAGE_FIELDS + TEXT_FIELDS

_SHARD_RE = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")


@dataclass(frozen=True)
class ImageRef:
    """A lazily opened image: a file path, or encoded bytes from a parquet/arrow row.

    Only the reference is kept, so loading a dataset does not decode thousands of images.
    """
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    label: str = ""  # where it came from, for error messages

    def open(self) -> "Image.Image":  # noqa: F821 - PIL imported lazily
        from PIL import Image
        where = self.label or (str(self.path) if self.path else "image bytes")
        try:
            if self.data is not None:
                img = Image.open(io.BytesIO(self.data))
            elif self.path is not None:
                if not self.path.is_file():
                    raise ScienceT2IError(
                        f"image file not found: {self.path} ({where}); restore the file or fix "
                        "the path in the dataset (paths are relative to the JSON file).")
                img = Image.open(self.path)
            else:
                raise ScienceT2IError(f"{where} has neither a path nor image bytes.")
            img.load()
        except ScienceT2IError:
            raise
        except Exception as exc:  # PIL.UnidentifiedImageError, OSError on truncation, ...
            raise ScienceT2IError(
                f"cannot decode {where} ({type(exc).__name__}: {exc}); the image is corrupt "
                "or not an image: replace it or drop the record.") from exc
        from ...nodes.core import rgb8
        return rgb8(img)   # 16-bit grey scaled to 8 bits, not clipped at 255


@dataclass
class ScienceRecord:
    implicit_prompts: list[str]
    explicit_prompts: list[str]
    superficial_prompts: list[str]
    explicit_images: list[ImageRef]
    superficial_images: list[ImageRef]
    category: str
    task: str
    index: int
    # the benchmark's rubric (test sets only): what the scene must hold, what is real
    scene_scoring: str = ""
    real_scoring: str = ""


# ---------------------------------------------------------------- layout detection

def _split_of(file: Path, root: Path) -> str:
    """Split name of a shard: from ``<split>-NNNNN-of-NNNNN``, else its folder, else its stem."""
    m = _SHARD_RE.match(file.stem)
    if m:
        return m.group("split")
    parents = [p for p in file.relative_to(root).parent.parts if p != "data"]
    if parents:
        return parents[-1]
    return file.stem


def _pick_split(splits: dict[str, Any], split: str | None, path: Path) -> str:
    if split is not None:
        if split not in splits:
            raise ScienceT2IError(
                f"split {split!r} not found in {path}; available: {sorted(splits)}.")
        return split
    if len(splits) == 1:
        return next(iter(splits))
    raise ScienceT2IError(
        f"{path} holds several splits {sorted(splits)}; choose one (split=... / --split).")


def _require_pyarrow(what: str) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise ScienceT2IError(f"reading {what} needs pyarrow, which cannot be imported ({exc}): "
                              f"pip install pyarrow, or {TRAINING_EXTRA}.") from exc


def _arrow_rows(files: list[Path]) -> list[dict]:
    _require_pyarrow("arrow datasets (save_to_disk folders, .arrow files)")
    import pyarrow as pa
    rows: list[dict] = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            try:
                table = pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:  # some writers use the random-access file format
                table = pa.ipc.open_file(src).read_all()
        rows.extend(table.to_pylist())
    return rows


def _parquet_rows(files: list[Path]) -> list[dict]:
    _require_pyarrow("parquet datasets")
    import pyarrow.parquet as pq
    rows: list[dict] = []
    for f in files:
        rows.extend(pq.read_table(str(f)).to_pylist())
    return rows


def _jsonl_rows(file: Path) -> list[dict]:
    """The records of a JSON Lines file; an error names the file's own line number."""
    rows = []
    for n, line in enumerate(read_text(file, "dataset file").splitlines(), 1):
        if not line.strip():
            continue
        row = parse_json(line, file, line=n)
        if not isinstance(row, dict):
            raise ScienceT2IError(f"{file} line {n} holds a {type(row).__name__}, not a record "
                                  "object ({\"implicit_prompt\": ..., ...}); fix that line.")
        rows.append(row)
    return rows


def _json_rows(file: Path) -> list[dict]:
    if file.suffix == ".jsonl":
        return _jsonl_rows(file)
    rows = parse_json(read_text(file, "dataset file"), file)
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ScienceT2IError(f"{file} must hold a list of objects (one per record).")
    return rows


def _saved_dataset_files(folder: Path) -> list[Path]:
    state = read_json(folder / "state.json", "dataset file")
    return [folder / d["filename"] for d in state.get("_data_files", [])]


def _read_raw(path: Path, split: str | None) -> tuple[list[dict], Path]:
    """Rows of the chosen split and the folder that relative image paths start from."""
    if not path.exists():
        raise ScienceT2IError(f"dataset not found: {path}; pass a folder holding a "
                              "save_to_disk dataset, parquet shards or JSON/JSONL records.")
    if path.is_file():
        if path.suffix == ".parquet":
            return _parquet_rows([path]), path.parent
        if path.suffix in (".json", ".jsonl"):
            return _json_rows(path), path.parent
        if path.suffix == ".arrow":
            return _arrow_rows([path]), path.parent
        raise ScienceT2IError(f"{path}: unsupported dataset file; use .parquet, .json, .jsonl "
                              "or a folder.")
    if (path / "dataset_dict.json").is_file():
        splits = read_json(path / "dataset_dict.json", "dataset file").get("splits", [])
        name = _pick_split({s: None for s in splits}, split, path)
        return _arrow_rows(_saved_dataset_files(path / name)), path / name
    if (path / "state.json").is_file():
        return _arrow_rows(_saved_dataset_files(path)), path
    for suffix, reader in ((".parquet", _parquet_rows), (".arrow", _arrow_rows)):
        files = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
        if files:
            by_split: dict[str, list[Path]] = {}
            for f in files:
                by_split.setdefault(_split_of(f, path), []).append(f)
            name = _pick_split(by_split, split, path)
            return reader(by_split[name]), path
    json_files = sorted(p for p in path.iterdir()
                        if p.suffix in (".json", ".jsonl") and p.is_file()
                        and p.name not in ("dataset_info.json", "state.json"))
    if json_files:
        by_split = {f.stem: f for f in json_files}
        name = _pick_split(by_split, split, path)
        return _json_rows(by_split[name]), by_split[name].parent
    raise ScienceT2IError(
        f"no dataset found in {path}: expected a save_to_disk folder (dataset_dict.json or "
        "state.json), .parquet shards, or a .json/.jsonl file of records.")


# ---------------------------------------------------------------- field conversion

def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _prompts(value: Any, index: int, name: str) -> list[str]:
    out = []
    for v in _as_list(value):
        if not isinstance(v, str):
            raise ScienceT2IError(
                f"record {index}: field {name!r} must be text or a list of texts, got "
                f"{type(v).__name__}.")
        if v.strip():
            out.append(v.strip())
    return out


def _images(value: Any, base: Path, index: int, name: str) -> list[ImageRef]:
    refs = []
    for k, v in enumerate(_as_list(value)):
        label = f"record {index} field {name!r}[{k}]"
        if isinstance(v, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
            data, rel = v.get("bytes"), v.get("path")
            if data:
                refs.append(ImageRef(data=bytes(data), label=label))
                continue
            v = rel
        if isinstance(v, (bytes, bytearray)):
            refs.append(ImageRef(data=bytes(v), label=label))
            continue
        if isinstance(v, (str, Path)) and str(v):
            p = Path(v)
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise ScienceT2IError(
                    f"{label}: image file not found: {p}; restore it or fix the path "
                    "(paths are relative to the dataset file).")
            refs.append(ImageRef(path=p, label=label))
            continue
        if v is None:
            continue
        raise ScienceT2IError(f"{label}: unsupported image value of type {type(v).__name__}; "
                              "use a path, encoded bytes or {'bytes', 'path'}.")
    return refs


def _blank(value: Any) -> bool:
    """An empty list, or empty text: present in the record but holding nothing."""
    if isinstance(value, (list, tuple)):
        return all(_blank(v) for v in value)
    return isinstance(value, str) and not value.strip()


def _check_required(row: dict, index: int, require: set[str]) -> None:
    for name in sorted(require):
        if row.get(name) is None:
            raise ScienceT2IError(
                f"record {index} is missing the required field {name!r} (has: "
                f"{sorted(k for k in row if row[k] is not None)}); fix the dataset or drop "
                "the record.")
        if _blank(row[name]):
            raise ScienceT2IError(
                f"record {index}: required field {name!r} is empty ({row[name]!r}); give it "
                "at least one value, or drop the record.")


def _rubric_text(value: Any) -> str:
    """A rubric field as the judge reads it: text, lines of a list, or a mapping's JSON."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value if v is not None)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _to_record(row: dict, index: int, base: Path, require: set[str]) -> ScienceRecord:
    _check_required(row, index, require)
    rec = ScienceRecord(
        implicit_prompts=_prompts(row.get("implicit_prompt"), index, "implicit_prompt"),
        explicit_prompts=_prompts(row.get("explicit_prompt"), index, "explicit_prompt"),
        superficial_prompts=_prompts(row.get("superficial_prompt"), index, "superficial_prompt"),
        explicit_images=_images(row.get("explicit_image"), base, index, "explicit_image"),
        superficial_images=_images(row.get("superficial_image"), base, index, "superficial_image"),
        category=str(row.get("category") or ""),
        task=str(row.get("law") or ""),
        index=index,
        scene_scoring=_rubric_text(row.get("scene_scoring")),
        real_scoring=_rubric_text(row.get("real_scoring")),
    )
    lists = {"implicit_prompt": rec.implicit_prompts, "explicit_prompt": rec.explicit_prompts,
             "superficial_prompt": rec.superficial_prompts,
             "explicit_image": rec.explicit_images, "superficial_image": rec.superficial_images}
    for name in require:
        if name in lists and not lists[name]:
            raise ScienceT2IError(f"record {index}: required field {name!r} is empty.")
    return rec


def load_records(path: str | Path, split: str | None = None,
                 require: Iterable[str] = ("implicit_prompt", "explicit_image"),
                 ) -> list[ScienceRecord]:
    """Read every record of ``split`` from a local Science-T2I-format dataset.

    ``split=None`` takes the only split there is (several -> an error naming them).
    Fields in ``require`` must be present and non-empty in every record; image files named
    by JSON datasets must exist. Both are checked here, so a broken dataset fails before a
    long evaluation or training run starts.
    """
    require = set(require)
    unknown = require - set(KNOWN_FIELDS)
    if unknown:
        raise ScienceT2IError(f"unknown required field(s) {sorted(unknown)}; known fields: "
                              f"{list(KNOWN_FIELDS)}.")
    rows, base = _read_raw(Path(path), split)
    if not rows:
        raise ScienceT2IError(f"dataset {path} (split {split!r}) has no records.")
    return [_to_record(row, i, base, require) for i, row in enumerate(rows)]


def read_rows(path: str | Path, split: str | None = None) -> tuple[list[dict], Path]:
    """The raw rows of ``split`` in any supported layout, and the folder that relative image
    paths start from (for datasets with other fields, e.g. SciGenBench's)."""
    return _read_raw(Path(path), split)


def images_field(value: Any, base: Path, index: int, name: str) -> list[ImageRef]:
    """An image field (path, bytes, {'bytes', 'path'} or a list of them) as references;
    a named file that does not exist is an error naming the record and field."""
    return _images(value, base, index, name)


def write_jsonl_dataset(records: list[dict], folder: Path) -> Path:
    """Write records as ``folder/data.jsonl`` plus ``folder/images/``; returns the JSONL path.

    Image fields may hold PIL images (saved as PNG), encoded bytes, or paths (kept, made
    relative to the folder when inside it). Written atomically.
    """
    from PIL import Image

    from ...nodes.core import write_bytes_atomic

    folder = Path(folder)
    img_dir = folder / "images"
    lines = []
    for i, rec in enumerate(records):
        out = dict(rec)
        for name in IMAGE_FIELDS:
            if name not in rec:
                continue
            value, paths = rec[name], []
            for k, v in enumerate(_as_list(value)):
                if isinstance(v, Image.Image):
                    buf = io.BytesIO()
                    v.save(buf, format="PNG")
                    rel = Path("images") / f"{i:06d}_{name}_{k}.png"
                    write_bytes_atomic(folder / rel, buf.getvalue())
                    paths.append(rel.as_posix())
                elif isinstance(v, (bytes, bytearray)):
                    fmt = (Image.open(io.BytesIO(v)).format or "png").lower()
                    rel = Path("images") / f"{i:06d}_{name}_{k}.{fmt}"
                    write_bytes_atomic(folder / rel, bytes(v))
                    paths.append(rel.as_posix())
                elif isinstance(v, ImageRef):
                    img = v.open()
                    buf = io.BytesIO()
                    img.save(buf, format="PNG")
                    rel = Path("images") / f"{i:06d}_{name}_{k}.png"
                    write_bytes_atomic(folder / rel, buf.getvalue())
                    paths.append(rel.as_posix())
                else:
                    p = Path(v)
                    try:
                        p = p.resolve().relative_to(folder.resolve()) if p.is_absolute() else p
                    except ValueError:
                        pass
                    paths.append(p.as_posix())
            out[name] = paths if isinstance(value, (list, tuple)) else (paths[0] if paths
                                                                      else None)
        lines.append(json.dumps(out, ensure_ascii=False))
    img_dir.mkdir(parents=True, exist_ok=True)
    target = folder / "data.jsonl"
    write_bytes_atomic(target, ("\n".join(lines) + "\n").encode("utf-8"))
    return target
