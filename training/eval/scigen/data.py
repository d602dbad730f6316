"""SciGenBench records and the generated images to evaluate, from local files.

Records come in any layout ``datasets.read_rows`` reads (a ``save_to_disk`` folder, parquet
shards, JSON or JSONL). Two field layouts are understood:
- the Hub release (J017athan/SciGenBench): ``original_question`` (the problem text the image
  is drawn for), ``multimodal_question`` (the question to answer from the image), ``answer``,
  ``image_type``, ``image`` (the real figure, when there is one);
- the repository's ``scigenbench.json``: ``id``, ``question``, ``image_type``, ``source`` and
  ``quizzes`` (a list of {question, options, correct_option}).
Optional everywhere: ``subject`` (or ``domain``), ``id``. Generated images are looked up in a
folder by record id, as SciGenBench's scripts do: ``<id>.png|.jpg|.jpeg|.webp``, directly or
under ``images/``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....nodes.errors import ScienceT2IError
from ....nodes.judges import Quiz, gold_letter
from ...core.datasets import ImageRef, images_field, read_rows

TEXT_KEYS = ("original_question", "question", "prompt", "caption")
QUIZ_KEYS = ("multimodal_question", "original_question", "question")
SUBJECT_KEYS = ("subject", "domain", "discipline")
# the real figure; "image" is not among them: in the Hub release it is the model's output
REAL_IMAGE_KEYS = ("real_image", "gt_image")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

_OPTION_LINE = re.compile(r"^\s*\(?([A-H])[.):\]]\s+(.+?)\s*$")


@dataclass
class SciGenRecord:
    id: str
    text: str                      # the problem the image is drawn for (judge and CLIP prompt)
    quizzes: list[Quiz]
    image_type: str = "-"
    subject: str = "-"
    real_image: ImageRef | None = None
    generated: ImageRef | None = None   # the image to evaluate, when the records carry it
    index: int = 0
    extra: dict = field(default_factory=dict)


def _text(row: dict, keys: tuple[str, ...]) -> tuple[str, str] | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return key, value.strip()
    return None


def _options_of(value: Any, where: str) -> dict[str, str]:
    if value is None or value == "" or value == []:
        return {}
    if isinstance(value, dict):
        return {str(k).strip().upper(): str(v).strip() for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = {}
        for n, item in enumerate(value):
            text = str(item).strip()
            m = _OPTION_LINE.match(text)
            letter, body = (m.group(1), m.group(2)) if m else (chr(65 + n), text)
            out[letter] = body
        return out
    raise ScienceT2IError(f"{where}: 'options' must be a mapping letter -> text or a list, "
                          f"got {type(value).__name__}.")


def split_inline_options(question: str) -> tuple[str, dict[str, str]]:
    """A question whose last lines are "A. ...", "B. ..." options -> (stem, options)."""
    lines = question.rstrip().splitlines()
    options: dict[str, str] = {}
    while lines:
        m = _OPTION_LINE.match(lines[-1])
        if not m or m.group(1) in options:
            break
        options[m.group(1)] = m.group(2)
        lines.pop()
    letters = sorted(options)
    if len(options) < 2 or letters != [chr(65 + i) for i in range(len(letters))]:
        return question, {}
    stem = "\n".join(lines).rstrip()
    if stem.endswith(("Options:", "Choices:")):
        stem = stem.rsplit("\n", 1)[0] if "\n" in stem else ""
    return stem, dict(sorted(options.items()))


def _quizzes(row: dict, rid: str) -> list[Quiz]:
    where = f"record {rid}"
    raw = row.get("quizzes")
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            raise ScienceT2IError(f"{where}: field 'quizzes' must be a non-empty list of "
                                  "{question, options, correct_option}.")
        out = []
        for k, q in enumerate(raw):
            at = f"{where} field 'quizzes'[{k}]"
            if not isinstance(q, dict):
                raise ScienceT2IError(f"{at} must be an object, got {type(q).__name__}.")
            question = q.get("question")
            gold = q.get("correct_option", q.get("answer"))
            if not isinstance(question, str) or not question.strip():
                raise ScienceT2IError(f"{at} has no 'question' text.")
            if gold is None or not str(gold).strip():
                raise ScienceT2IError(f"{at} has no 'correct_option' (or 'answer').")
            out.append(_checked(Quiz(question.strip(), _options_of(q.get("options"), at),
                                     str(gold).strip()), at))
        return out
    found = _text(row, QUIZ_KEYS)
    gold = row.get("answer")
    if found is None or gold is None or not str(gold).strip():
        missing = "answer" if found else "multimodal_question (or question)"
        raise ScienceT2IError(
            f"{where} has no quiz: field {missing!r} is missing or empty. Inverse validation "
            "needs 'quizzes', or a question ('multimodal_question') with its 'answer'.")
    stem, options = split_inline_options(found[1])
    return [_checked(Quiz(stem, options, str(gold).strip()), f"{where} field {found[0]!r}")]


def _checked(quiz: Quiz, where: str) -> Quiz:
    """A multiple-choice quiz must name one of its options as the answer."""
    if quiz.options and gold_letter(quiz) is None:
        raise ScienceT2IError(f"{where}: the answer {quiz.answer!r} is not one of the options "
                              f"{list(quiz.options)}; give the option letter.")
    return quiz


def _image_of(row: dict, key: str, base: Path, index: int) -> ImageRef | None:
    if row.get(key) in (None, "", b""):
        return None
    refs = images_field(row[key], base, index, key)
    return refs[0] if refs else None


def record_id(row: dict, index: int) -> str:
    """The record's id (its row number when it has none); it names image files."""
    rid = str(row["id"]).strip() if row.get("id") not in (None, "") else str(index)
    if not re.fullmatch(r"[\w.\-]+", rid):
        raise ScienceT2IError(f"record {index}: id {rid!r} cannot name an image file; ids may "
                              "hold letters, digits, '_', '-' and '.'.")
    return rid


def problem_text(row: dict, rid: str) -> str:
    """The problem the image is drawn for, from the first of TEXT_KEYS holding text."""
    text = _text(row, TEXT_KEYS)
    if text is None:
        raise ScienceT2IError(
            f"record {rid} has no problem text: none of the fields {list(TEXT_KEYS)} holds "
            f"text (has: {sorted(k for k, v in row.items() if v not in (None, ''))}).")
    return text[1]


def check_unique_ids(ids: list[str]) -> None:
    """Ids name files, so two records may not share one."""
    seen: dict[str, int] = {}
    for index, rid in enumerate(ids):
        if rid in seen:
            raise ScienceT2IError(f"records {seen[rid]} and {index} share the id {rid!r}; "
                                  "ids name the generated images, so they must be unique.")
        seen[rid] = index


def record_from_row(row: dict, index: int, base: Path, *, real_key: str | None = None,
                    generated_key: str | None = None) -> SciGenRecord:
    rid = record_id(row, index)
    text = problem_text(row, rid)
    real = None
    for key in (real_key,) if real_key else REAL_IMAGE_KEYS:
        real = _image_of(row, key, base, index)
        if real is not None:
            break
    generated = _image_of(row, generated_key, base, index) if generated_key else None
    subject = _text(row, SUBJECT_KEYS)
    return SciGenRecord(id=rid, text=text, quizzes=_quizzes(row, rid),
                        image_type=str(row.get("image_type") or "-").strip() or "-",
                        subject=subject[1] if subject else "-", real_image=real,
                        generated=generated, index=index,
                        extra={"source": row.get("source")} if row.get("source") else {})


def load_scigen_records(path: str | Path, split: str | None = None,
                        source: str | None = None, *, real_key: str | None = None,
                        generated_key: str | None = None) -> list[SciGenRecord]:
    """Every record of ``split`` (``source`` keeps only rows whose 'source' field matches,
    e.g. scigen or seephys in the repository's single JSON file). Fails before any judging
    on a malformed record, naming it and the field; ids must be unique. ``real_key`` names
    the column of the real figure (default: real_image or gt_image), ``generated_key`` the
    column of the image to evaluate (the Hub release's ``image``: one config per model)."""
    rows, base = read_rows(Path(path), split)
    if source:
        rows = [r for r in rows if str(r.get("source", "")) == source]
    if not rows:
        raise ScienceT2IError(f"no records in {path}" + (f" with source {source!r}"
                                                          if source else "") + ".")
    for key, flag in ((real_key, "--real-column"), (generated_key, "--generated-column")):
        if key and not any(key in row for row in rows):
            raise ScienceT2IError(f"{flag} {key}: no record has that field (fields: "
                                  f"{sorted(rows[0])}).")
    records = [record_from_row(row, i, base, real_key=real_key, generated_key=generated_key)
               for i, row in enumerate(rows)]
    check_unique_ids([r.id for r in records])
    return records


def find_generated(folder: Path, record_id: str) -> Path | None:
    """The generated image of a record: ``<id>.<ext>`` or ``images/<id>.<ext>``."""
    for sub in (folder, folder / "images"):
        for suffix in IMAGE_SUFFIXES:
            p = sub / f"{record_id}{suffix}"
            if p.is_file():
                return p
    return None


def attach_real_images(records: list[SciGenRecord], folder: Path) -> int:
    """Give records without a real image the one named by their id in ``folder`` (how
    SciGenBench keeps SeePhys' figures: data/seephys_images/<id>.png); returns how many."""
    if not folder.is_dir():
        raise ScienceT2IError(f"--real-images {folder} is not a folder of <record id>.png.")
    count = 0
    for record in records:
        if record.real_image is None:
            path = find_generated(folder, record.id)
            if path is not None:
                record.real_image = ImageRef(path=path, label=str(path))
                count += 1
    return count


def parse_image_sets(specs: list[str]) -> dict[str, Path]:
    """``--images`` values: ``DIR`` or ``NAME=DIR`` -> {name: folder}."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        folder = Path(path).expanduser()
        name = name.strip() or folder.name or str(folder)
        if not folder.is_dir():
            raise ScienceT2IError(f"--images {spec}: {folder} is not a folder of generated "
                                  "images (<record id>.png).")
        if name in out:
            raise ScienceT2IError(f"--images: the name {name!r} is used twice; write "
                                  "NAME=DIR to tell the sets apart.")
        out[name] = folder
    return out
