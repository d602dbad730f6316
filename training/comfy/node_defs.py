"""Node definitions for checking workflows: the pack's node classes (``INPUT_TYPES`` /
``RETURN_TYPES``, read directly) and ``core_nodes.json``, a recorded copy of the signatures of
the ComfyUI core nodes the workflows use (ComfyUI itself cannot be installed from a package
registry, so CI checks against this record); and the rules a value or a link must follow."""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ...nodes.errors import ScienceT2IError

CORE_NODES_FILE = Path(__file__).with_name("core_nodes.json")

# Frontend-only nodes: drawn on the canvas, never sent to the server.
VIRTUAL_NODES = {"Note", "MarkdownNote"}

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# Values of the extra "control after generate" widget the frontend adds after seed inputs.
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}

MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")

# Node modes in UI workflows: 0 always, 2 muted ("never"), 4 bypassed.
ACTIVE_MODES = {0, None}


@dataclass(frozen=True)
class InputSpec:
    """One input of a node class."""
    name: str
    type: str                       # "IMAGE", "INT", "COMBO", "*", "IMAGE,MASK", ...
    required: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    # Allowed values of a combo whose options do not depend on the files installed.
    choices: tuple[Any, ...] | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control_widget(self) -> bool:
        # The frontend adds "control after generate" when asked to, and by legacy
        # convention to every INT input called seed / noise_seed.
        if self.options.get("control_after_generate"):
            return True
        return self.type == "INT" and self.name in ("seed", "noise_seed")

    @property
    def has_upload_widget(self) -> bool:
        # image_upload / video_upload / ... add an upload button whose value is saved too.
        return any(k.endswith("_upload") and v for k, v in self.options.items())


@dataclass(frozen=True)
class NodeDef:
    """The signature of a node class: its inputs in widget order and its output types."""
    name: str
    inputs: dict[str, InputSpec]
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str                     # "pack" or "ComfyUI core"

    @property
    def widgets(self) -> list[InputSpec]:
        return [spec for spec in self.inputs.values() if spec.is_widget]


NodeDefs = dict[str, NodeDef]


def _input_spec(name: str, raw: Any, required: bool, dynamic_combos: bool) -> InputSpec:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ScienceT2IError(f"input {name!r}: expected (type, options), got {raw!r}")
    kind = raw[0]
    options = dict(raw[1]) if len(raw) > 1 and isinstance(raw[1], Mapping) else {}
    if isinstance(kind, (list, tuple)):
        choices = tuple(kind)
        # Combos listing installed model files change with the machine: accept any name.
        dynamic = dynamic_combos and (not choices or any(
            isinstance(c, str) and (c.lower().endswith(MODEL_EXTENSIONS) or "/" in c)
            for c in choices))
        return InputSpec(name, "COMBO", required, options, None if dynamic else choices)
    kind = str(kind)
    if kind == "COMBO":
        static = options.get("options")
        choices = tuple(static) if isinstance(static, (list, tuple)) else None
        return InputSpec(name, kind, required, options, choices)
    return InputSpec(name, kind, required, options)


def node_def_from_class(name: str, cls: type) -> NodeDef:
    """The signature of a V1 node class, read from INPUT_TYPES / RETURN_TYPES."""
    spec = cls.INPUT_TYPES()
    inputs: dict[str, InputSpec] = {}
    for section, required in (("required", True), ("optional", False)):
        for input_name, raw in (spec.get(section) or {}).items():
            inputs[input_name] = _input_spec(input_name, raw, required, dynamic_combos=True)
    outputs = tuple("COMBO" if isinstance(t, (list, tuple)) else str(t) for t in cls.RETURN_TYPES)
    names = tuple(getattr(cls, "RETURN_NAMES", None) or outputs)
    return NodeDef(name, inputs, outputs, names, "pack")


def pack_node_defs() -> NodeDefs:
    from ...nodes import NODE_CLASS_MAPPINGS
    return {name: node_def_from_class(name, cls) for name, cls in NODE_CLASS_MAPPINGS.items()}


def core_node_defs(path: str | Path = CORE_NODES_FILE) -> NodeDefs:
    """The recorded ComfyUI core signatures, in /object_info's layout: ``{class: {"input":
    {"required": {...}, "optional": {...}}, "output": [...], "output_name": [...]}}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    defs: NodeDefs = {}
    for name, entry in data["nodes"].items():
        inputs: dict[str, InputSpec] = {}
        for section, required in (("required", True), ("optional", False)):
            for input_name, raw in (entry["input"].get(section) or {}).items():
                inputs[input_name] = _input_spec(input_name, raw, required, dynamic_combos=False)
        outputs = tuple(entry["output"])
        defs[name] = NodeDef(name, inputs, outputs, tuple(entry.get("output_name") or outputs),
                             "ComfyUI core")
    return defs


def load_node_defs() -> NodeDefs:
    """The pack's node classes plus the recorded ComfyUI core nodes."""
    defs = core_node_defs()
    pack = pack_node_defs()
    clash = sorted(set(defs) & set(pack))
    if clash:
        raise ScienceT2IError(f"pack node classes {clash} clash with ComfyUI core node names; "
                              "rename them with the pack prefix")
    defs.update(pack)
    return defs


def types_compatible(output_type: str, input_type: str) -> bool:
    """ComfyUI's rule: "*" matches anything; comma-separated types match any member."""
    if output_type == "*" or input_type == "*":
        return True
    outs = {t.strip() for t in output_type.split(",")}
    ins = {t.strip() for t in input_type.split(",")}
    return bool(outs & ins)


def unknown_node(where: str, type_name: str, defs: NodeDefs) -> str:
    close = difflib.get_close_matches(type_name, list(defs), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"{where}: unknown node type {type_name!r} (neither a node of this pack nor a "
            f"recorded ComfyUI core node in {CORE_NODES_FILE.name}){hint}")


def unknown_input(where: str, name: str, node: NodeDef) -> str:
    close = difflib.get_close_matches(name, list(node.inputs), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"{where}: {name!r} is not an input of {node.name} (its inputs: "
            f"{', '.join(node.inputs) or 'none'}){hint}")


def value_problem(spec: InputSpec, value: Any) -> str | None:
    """Why a literal widget value does not fit its input, or None."""
    t = spec.type
    if t == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expects an integer, got {value!r}"
    elif t == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expects a number, got {value!r}"
    elif t == "BOOLEAN":
        if not isinstance(value, bool):
            return f"expects true or false, got {value!r}"
    elif t == "STRING":
        if not isinstance(value, str):
            return f"expects a string, got {value!r}"
    elif t == "COMBO":
        if spec.choices is not None:
            if value not in spec.choices or isinstance(value, bool):
                return f"is {value!r}, not one of {list(spec.choices)}"
        elif not isinstance(value, str):
            return f"expects the name of a file, got {value!r}"
    if t in ("INT", "FLOAT") and not isinstance(value, bool):
        lo, hi = spec.options.get("min"), spec.options.get("max")
        if lo is not None and value < lo:
            return f"is {value!r}, below its minimum {lo}"
        if hi is not None and value > hi:
            return f"is {value!r}, above its maximum {hi}"
    return None
