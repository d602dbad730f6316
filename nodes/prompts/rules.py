"""Rule engine for scientific prompts: task detection, subject extraction, rewriting.

Everything task-specific is data in ``knowledge/tasks.json``; this module only applies it.

Subject ("object") rules, following the Science-T2I rollout data, where the subject is the
visible region in which the phenomenon shows, not always the grammatical subject:

1. The prompt is reduced to its first sentence; framing ("A simple, realistic image of ...",
   "Depicting ...") and comma clauses made only of style words ("simple, clear and realistic")
   are dropped; the task's condition modifiers ("unripe", "powerless", "rarely watered") too.
2. The grammatical subject is the first noun phrase: after a leading prepositional clause
   ("In a humid setting, a wooden cup appears") the first clause starting with an article;
   determiners and unit phrases ("a piece of", "a stick of") are skipped and the phrase ends at
   the first preposition or verb ("in", "without", "that", "filled", ...).
3. The task's ``region`` template turns the slots into the subject:
   ``{entity}`` (the noun phrase; EL, GR, LI, ME, RI, RU), ``{container}`` (the first
   container noun: SO, EV, DI, IM, and BU where box/tank/aquarium map to "glass"),
   ``{tint} stain`` (AB: the colour word of the liquid, else the liquid itself: "blue ink" ->
   "blue stain", "coffee" -> "coffee stain"), or a fixed region noun ("flame" for FR, "flower"
   for LR/WR, "plant" for SC).
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ScienceT2IError

KNOWLEDGE_FILE = Path(__file__).with_name("knowledge") / "tasks.json"
NONE_TASK = "none"
# Below this summed cue weight a prompt is not considered scientific.
MIN_SCORE = 1.5
_REQUIRED_TASK_KEYS = ("code", "name", "discipline", "orientation", "principle",
                       "visual_consequence", "cues", "region", "templates", "examples")


@dataclass(frozen=True)
class Task:
    code: str
    name: str
    discipline: str
    orientation: str  # "subject" or "condition"
    principle: str
    visual_consequence: str
    cues: tuple[tuple[re.Pattern, float], ...]
    strip: tuple[str, ...]
    slots: dict[str, Any]
    region: str
    region_default: str
    container_aliases: dict[str, str]
    templates: dict[str, str]
    variants: tuple[dict, ...]
    examples: tuple[dict, ...]


@dataclass(frozen=True)
class Knowledge:
    tasks: dict[str, Task]
    grammar: dict[str, Any]


@dataclass
class Detection:
    code: str                     # task code, or "none"
    name: str
    confidence: float             # 0..1
    cues: list[str]               # the matched cue texts of the chosen task
    scores: dict[str, float] = field(default_factory=dict)  # summed cue weight per task


@dataclass
class Rewrite:
    explicit: str
    superficial: str
    task: str
    subject: str
    slots: dict[str, str]
    backend: str = "rules"


@dataclass
class Triple:
    implicit: str
    explicit: str
    superficial: str


# ---------------------------------------------------------------- knowledge

def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ScienceT2IError(f"bad regular expression in {where}: {pattern!r} ({exc}).") from exc


def _parse_task(raw: dict, path: Path) -> Task:
    missing = [k for k in _REQUIRED_TASK_KEYS if k not in raw]
    if missing:
        raise ScienceT2IError(f"{path}: task {raw.get('code', '?')} lacks {missing}.")
    if len(raw["examples"]) < 2:
        raise ScienceT2IError(f"{path}: task {raw['code']} needs at least two examples.")
    where = f"{path} task {raw['code']}"
    return Task(
        code=raw["code"], name=raw["name"], discipline=raw["discipline"],
        orientation=raw["orientation"], principle=raw["principle"],
        visual_consequence=raw["visual_consequence"],
        cues=tuple((_compile(c["pattern"], where), float(c["weight"])) for c in raw["cues"]),
        strip=tuple(raw.get("strip", ())),
        slots={name: {"patterns": [_compile(p, where) for p in spec.get("patterns", [])],
                      "default": spec.get("default", "")}
               for name, spec in raw.get("slots", {}).items()},
        region=raw["region"], region_default=raw.get("region_default", ""),
        container_aliases=dict(raw.get("container_aliases", {})),
        templates=dict(raw["templates"]),
        variants=tuple(raw.get("variants", ())),
        examples=tuple(raw["examples"]),
    )


@functools.lru_cache(maxsize=4)
def load_knowledge(path: str | None = None) -> Knowledge:
    """Parse and check the task knowledge file (cached)."""
    file = Path(path) if path else KNOWLEDGE_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ScienceT2IError(f"cannot read the task knowledge file {file} ({exc}); "
                              "reinstall the pack to restore it.") from exc
    tasks = {t["code"]: _parse_task(t, file) for t in raw["tasks"]}
    return Knowledge(tasks=tasks, grammar=raw["grammar"])


def task_codes() -> list[str]:
    return list(load_knowledge().tasks)


def get_task(code: str) -> Task:
    tasks = load_knowledge().tasks
    key = (code or "").strip().upper()
    if key not in tasks:
        by_name = {t.name.lower(): t for t in tasks.values()}
        if (code or "").strip().lower() in by_name:
            return by_name[code.strip().lower()]
        raise ScienceT2IError(f"unknown task {code!r}; use one of {sorted(tasks)} "
                              f"({', '.join(t.name for t in tasks.values())}).")
    return tasks[key]


def _check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ScienceT2IError("the prompt is empty; type an implicit prompt such as "
                              "'an unripe tomato'.")
    return " ".join(prompt.split())


# ---------------------------------------------------------------- detection

def detect_task(prompt: str) -> Detection:
    """The task the prompt implies, from weighted cue patterns; "none" if no cue suffices.

    confidence = (1 - exp(-best / MIN_SCORE)) * best / (best + runner-up): high when the cues
    are strong and one task clearly leads.
    """
    text = _check_prompt(prompt)
    scores: dict[str, float] = {}
    matched: dict[str, list[str]] = {}
    for task in load_knowledge().tasks.values():
        total, hits = 0.0, []
        for pattern, weight in task.cues:
            m = pattern.search(text)
            if m:
                total += weight
                hits.append(m.group(0))
        if total:
            scores[task.code], matched[task.code] = total, hits
    if not scores:
        return Detection(NONE_TASK, NONE_TASK, 0.0, [], {})
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    best_code, best = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    if best < MIN_SCORE:
        return Detection(NONE_TASK, NONE_TASK, 0.0, [], scores)
    conf = (1.0 - math.exp(-best / MIN_SCORE)) * best / (best + second)
    return Detection(best_code, get_task(best_code).name, round(conf, 4), matched[best_code],
                     scores)


# ---------------------------------------------------------------- subject extraction

def _words(key: str) -> set[str]:
    return {w.lower() for w in load_knowledge().grammar[key]}


def _core_text(text: str, task: Task | None) -> str:
    """First sentence without framing, with the task's condition modifiers removed."""
    g = load_knowledge().grammar
    text = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip())[0].strip().rstrip(".!? ")
    for pattern in g["framing_prefixes"]:
        text = re.sub(pattern, "", text, flags=re.IGNORECASE).strip()
    for word in (task.strip if task else ()):
        text = re.sub(rf"\b{re.escape(word)}\b,?\s*", "", text, flags=re.IGNORECASE)
    return " ".join(text.split())


def _subject_clause(text: str) -> str:
    style, preps = _words("style_words"), _words("leading_prepositions")
    clauses = [c.strip() for c in text.split(",")]
    clauses = [c for c in clauses if c and not all(w.lower() in style for w in c.split())]
    if not clauses:
        return ""
    if clauses[0].split()[0].lower() in preps:
        for c in clauses[1:]:
            if c.split()[0].lower() in ("a", "an", "the"):
                return c
    return clauses[0]


def _skip_leading(toks: list[str]) -> list[str]:
    """Drop determiners and unit phrases: "a piece of butter" -> "butter"."""
    dets, units = _words("determiners"), _words("units")
    i = 0
    while i < len(toks):
        low = toks[i].lower()
        if low in dets:
            i += 1
        elif (low in units or f"{low} of" in units) and i + 1 < len(toks) \
                and toks[i + 1].lower() == "of":
            i += 2
        else:
            break
    return toks[i:]


def noun_phrase(prompt: str, task: Task | None = None) -> str:
    """The grammatical subject of an image prompt (rule 2 of the module docstring)."""
    clause = _subject_clause(_core_text(prompt, task))
    bounds = _words("boundaries")
    toks = _skip_leading(clause.split())
    out: list[str] = []
    for k, tok in enumerate(toks):
        low = tok.lower()
        if low in bounds:
            break
        # a participle followed by a preposition is a verb ("a cat sleeping on"), while
        # "watering can" or "ceiling light" keep their -ing word
        nxt = toks[k + 1].lower() if k + 1 < len(toks) else ""
        if out and low.endswith("ing") and (not nxt or nxt in bounds):
            break
        out.append(tok)
    return " ".join(out).strip(" ,.;:")


def _find_container(text: str) -> str:
    containers = sorted(load_knowledge().grammar["containers"], key=len, reverse=True)
    alt = "|".join(re.escape(c) for c in containers)
    m = re.search(rf"\b({alt})\b(?:\s+({alt})\b)?", text, flags=re.IGNORECASE)
    if not m:
        return ""
    return (m.group(2) or m.group(1)).lower()


def _strip_determiners(phrase: str) -> str:
    return " ".join(_skip_leading(phrase.split())).strip(" ,.;:")


def extract_slots(prompt: str, task: Task) -> dict[str, str]:
    """Slots of a prompt for one task: entity, container, tint, scene and the task's own."""
    text = _check_prompt(prompt)
    core = _core_text(text, task)
    slots: dict[str, str] = {}
    for name, spec in task.slots.items():
        for pattern in spec["patterns"]:
            m = pattern.search(core)
            if m:
                for key, val in m.groupdict().items():
                    if val and key not in slots:
                        slots[key] = _strip_determiners(val)
                break
    for name, spec in task.slots.items():
        if not slots.get(name) and spec["default"]:
            slots[name] = spec["default"]
    container = _find_container(core)
    slots["container"] = container or slots.get("container") or task.region_default
    if not slots.get("entity"):
        slots["entity"] = (container if task.region == "{container}" and container
                           and "liquid" in task.slots else noun_phrase(text, task))
    colours = _words("colours")
    entity_words = slots["entity"].lower().split()
    colour = next((w for w in entity_words if w in colours), "")
    slots["tint"] = colour or re.sub(r"\b(?:food colou?ring|dye|colou?rant)\b", "",
                                     slots["entity"], flags=re.IGNORECASE).strip()
    scene = re.search(load_knowledge().grammar["scene_pattern"], text, flags=re.IGNORECASE)
    slots["scene"] = scene.group(0) if scene else ""
    return slots


def _fill(template: str, slots: dict[str, str]) -> str:
    text = re.sub(r"\{(\w+)\}", lambda m: slots.get(m.group(1), ""), template)
    text = " ".join(text.split())
    text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)  # "a ice" -> "an ice"
    return text.strip(" ,")


def region_of(task: Task, slots: dict[str, str]) -> str:
    container = slots.get("container", "")
    slots = {**slots, "container": task.container_aliases.get(container, container)}
    region = _fill(task.region, slots)
    if not region or region == "stain":
        region = task.region_default or region or slots.get("entity", "")
    return region


def extract_subject(prompt: str, task: str | Task | None = None) -> str:
    """The region a subject mask should look for (rule 3 of the module docstring).

    Without a task (or with "none") the grammatical subject is returned.
    """
    text = _check_prompt(prompt)
    if task is None or (isinstance(task, str) and task.lower() in ("auto", "")):
        code = detect_task(text).code
        task = None if code == NONE_TASK else code
    if task is None or (isinstance(task, str) and task.lower() == NONE_TASK):
        return noun_phrase(text)
    task = get_task(task) if isinstance(task, str) else task
    return region_of(task, extract_slots(text, task))


# ---------------------------------------------------------------- rewriting

def _is_plural(phrase: str) -> bool:
    last = phrase.split()[-1].lower() if phrase.split() else ""
    return len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is"))


def _variant_templates(task: Task, slots: dict[str, str], prompt: str) -> dict[str, str]:
    templates = dict(task.templates)
    for v in task.variants:
        hit = ((v.get("when_entity") and re.search(v["when_entity"], slots.get("entity", ""),
                                                   flags=re.IGNORECASE))
               or (v.get("when_prompt") and re.search(v["when_prompt"], prompt,
                                                      flags=re.IGNORECASE)))
        if hit:
            templates.update({k: v[k] for k in ("implicit", "explicit", "superficial") if k in v})
            break
    if _is_plural(slots.get("entity", "")):
        # "a hard {entity}" -> "hard {entity}" for "unripe strawberries"
        templates = {k: re.sub(r"\b[Aa]n? ((?:[\w,-]+ ){0,4}?)\{entity\}", r"\1{entity}", t)
                     for k, t in templates.items()}
    return templates


def _with_scene(text: str, scene: str) -> str:
    scene = " ".join((scene or "").split()).strip(" ,.")
    if not scene:
        return text
    if scene.split()[0].lower() not in _words("leading_prepositions") | {"beside", "near", "at"}:
        scene = f"in {scene}" if scene.split()[0].lower() in ("a", "an", "the") else f"in a {scene}"
    # after a descriptive clause a comma keeps the scene from reading as part of it
    joiner = ", " if "," in text else " "
    return _fill(f"{text}{joiner}{scene}", {})


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


def rewrite_rules(prompt: str, task: str | None = None) -> Rewrite:
    """Implicit -> explicit and superficial with the task's templates.

    For a prompt with no scientific cue (task "none") both rewrites are the prompt itself.
    """
    text = _check_prompt(prompt)
    code = detect_task(text).code if task in (None, "", "auto") else get_task(task).code
    if code == NONE_TASK:
        return Rewrite(text, text, NONE_TASK, noun_phrase(text), {})
    t = get_task(code)
    slots = extract_slots(text, t)
    templates = _variant_templates(t, slots, text)
    explicit = _sentence(_with_scene(_fill(templates["explicit"], slots), slots["scene"]))
    superficial = _sentence(_with_scene(_fill(templates["superficial"], slots), slots["scene"]))
    return Rewrite(explicit, superficial, code, region_of(t, slots), slots)


def task_container_default(task: Task) -> str:
    """The container the templates use when none is named ("glass" for DI and IM)."""
    return task.region_default if task.region == "{container}" else ""


def build_triple(task: str, subject: str, scene: str = "", **slots: str) -> Triple:
    """(implicit, explicit, superficial) prompts for a task and the thing it acts on.

    ``subject`` fills the templates' {entity}: the object (GR, ME, RU, EL, LI, BU, RI), the
    plant (LR, WR, SC), the container (SO, EV), the dye or liquid (DI, AB, IM) or the burning
    substance (FR). Other slots (liquid, medium, season) take the task's defaults unless given.
    ``scene`` ("in a bedroom", "on the street") is appended to all three prompts.
    """
    t = get_task(task)
    if not isinstance(subject, str) or not subject.strip():
        raise ScienceT2IError(f"the subject is empty; name the thing the {t.name} task acts "
                              f"on, e.g. {t.examples[0].get('subject', 'an object')!r}.")
    values = {name: spec["default"] for name, spec in t.slots.items()}
    values.update({k: v for k, v in slots.items() if v})
    values["entity"] = " ".join(subject.split())
    values.setdefault("container", task_container_default(t))
    colours = _words("colours")
    values["tint"] = next((w for w in values["entity"].lower().split() if w in colours),
                          values["entity"])
    templates = _variant_templates(t, values, " ".join(str(v) for v in values.values()))
    return Triple(*(_sentence(_with_scene(_fill(templates[k], values), scene))
                    for k in ("implicit", "explicit", "superficial")))
