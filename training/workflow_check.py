"""Static checks of ComfyUI workflow JSON against the node definitions it uses.

Two formats are understood:

- UI format, what ComfyUI's frontend saves: ``{"nodes": [{id, type, inputs, outputs,
  widgets_values, mode, ...}], "links": [[id, from_node, from_slot, to_node, to_slot, type]]}``;
- API format, what ``POST /prompt`` and ``comfy run`` take: ``{node_id: {"class_type": ...,
  "inputs": {name: value | [source_node_id, output_index]}}}``.

Node definitions come from the pack's own classes (``INPUT_TYPES`` / ``RETURN_TYPES``, read
directly) and from ``comfy_core_nodes.json``, a recorded copy of the signatures of the ComfyUI
core nodes the workflows use (ComfyUI itself cannot be installed from a package registry, so CI
checks against this record). ``check_workflow`` reports unknown nodes, unknown or missing
inputs, dangling links, out-of-range slots, type mismatches, bad widget values and widget
counts; ``check_twins`` reports where a UI workflow and its API twin describe different graphs.
Each problem is one line naming the node, the input and what to change.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..nodes.errors import ScienceT2IError

CORE_NODES_FILE = Path(__file__).with_name("comfy_core_nodes.json")
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


# ----------------------------------------------------------------------------- definitions

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
    from ..nodes import NODE_CLASS_MAPPINGS
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


# ----------------------------------------------------------------------------- loading

def load_workflow(path: str | Path) -> dict:
    from .faults import read_json
    path = Path(path)
    if not path.is_file():
        raise ScienceT2IError(f"workflow file {path} does not exist")
    data = read_json(path, "workflow file", fix="save it again from ComfyUI (Workflow > "
                     "Export or Export (API))")
    if not isinstance(data, dict):
        raise ScienceT2IError(f"workflow file {path} holds a {type(data).__name__}, not a "
                              "workflow object")
    return data


def workflow_format(workflow: Mapping) -> str:
    """"ui" or "api"; ScienceT2IError for anything else."""
    if isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), list):
        return "ui"
    if workflow and all(isinstance(v, Mapping) and "class_type" in v for v in workflow.values()):
        return "api"
    raise ScienceT2IError("not a ComfyUI workflow: expected UI format (\"nodes\" and \"links\" "
                          "lists) or API format ({node_id: {\"class_type\", \"inputs\"}})")


def workflow_node_types(workflow: Mapping) -> set[str]:
    """The node classes a workflow uses (frontend-only notes left out)."""
    if workflow_format(workflow) == "ui":
        return {str(n.get("type")) for n in workflow["nodes"]} - VIRTUAL_NODES
    return {str(n["class_type"]) for n in workflow.values()}


# ----------------------------------------------------------------------------- shared rules

def types_compatible(output_type: str, input_type: str) -> bool:
    """ComfyUI's rule: "*" matches anything; comma-separated types match any member."""
    if output_type == "*" or input_type == "*":
        return True
    outs = {t.strip() for t in output_type.split(",")}
    ins = {t.strip() for t in input_type.split(",")}
    return bool(outs & ins)


def _unknown_node(where: str, type_name: str, defs: NodeDefs) -> str:
    close = difflib.get_close_matches(type_name, list(defs), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"{where}: unknown node type {type_name!r} (neither a node of this pack nor a "
            f"recorded ComfyUI core node in {CORE_NODES_FILE.name}){hint}")


def _unknown_input(where: str, name: str, node: NodeDef) -> str:
    close = difflib.get_close_matches(name, list(node.inputs), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"{where}: {name!r} is not an input of {node.name} (its inputs: "
            f"{', '.join(node.inputs) or 'none'}){hint}")


def _value_problem(spec: InputSpec, value: Any) -> str | None:
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


# ----------------------------------------------------------------------------- UI format

def _ui_widget_values(node: Mapping, nodedef: NodeDef, where: str,
                      problems: list[str]) -> tuple[dict[str, Any], bool]:
    """Map ``widgets_values`` onto the widget inputs in definition order, as the frontend
    does: a seed's "control after generate" value follows it, an upload button's value
    follows its combo. Reports a count that does not fit; the flag says whether the
    values could be mapped."""
    raw = node.get("widgets_values", [])
    if isinstance(raw, Mapping):     # some frontends save {name: value}
        return {k: v for k, v in raw.items() if k in nodedef.inputs}, True
    values = list(raw or [])
    widgets = nodedef.widgets
    out: dict[str, Any] = {}
    i = 0
    for spec in widgets:
        if i >= len(values):
            break
        out[spec.name] = values[i]
        i += 1
        if spec.has_control_widget:
            if i < len(values) and values[i] in CONTROL_VALUES:
                i += 1
            else:
                got = repr(values[i]) if i < len(values) else "nothing"
                problems.append(f"{where}: widget {spec.name!r} must be followed by its control "
                                f"after generate value (one of {sorted(CONTROL_VALUES)}), got {got}")
                return out, False
        if spec.has_upload_widget and i < len(values) and values[i] == "image":
            i += 1   # older frontends did not save the upload button's value
    if len(out) < len(widgets) or i != len(values):
        names = ", ".join(s.name + (" + control_after_generate" if s.has_control_widget else "")
                          for s in widgets) or "none"
        expected = len(widgets) + sum(s.has_control_widget for s in widgets)
        problems.append(f"{where}: widgets_values has {len(values)} values but {nodedef.name} "
                        f"expects {expected} ({names}); re-save the workflow from ComfyUI or "
                        "fix the list")
        return out, False
    return out, True


def _check_ui(workflow: Mapping, defs: NodeDefs) -> list[str]:
    problems: list[str] = []
    nodes: dict[int, Mapping] = {}
    for node in workflow["nodes"]:
        nid = node.get("id")
        if nid in nodes:
            problems.append(f"node {nid}: the id is used by more than one node")
        nodes[nid] = node
    links: dict[int, list] = {}
    for link in map(_link_list, workflow["links"]):
        if not isinstance(link, (list, tuple)) or len(link) < 6:
            problems.append(f"link {link!r}: expected [id, from_node, from_slot, to_node, "
                            "to_slot, type]")
            continue
        links[link[0]] = list(link)

    for nid, node in nodes.items():
        type_name = str(node.get("type"))
        where = f"node {nid} ({type_name})"
        if type_name in VIRTUAL_NODES:
            continue
        nodedef = defs.get(type_name)
        if nodedef is None:
            problems.append(_unknown_node(f"node {nid}", type_name, defs))
            continue
        if node.get("mode") not in ACTIVE_MODES:
            continue   # muted / bypassed nodes are not run
        linked: set[str] = set()
        for slot, inp in enumerate(node.get("inputs") or []):
            name = inp.get("name")
            spec = nodedef.inputs.get(name)
            if spec is None:
                problems.append(_unknown_input(f"{where} input slot {slot}", name, nodedef))
                continue
            declared = str(inp.get("type", spec.type))
            if spec.type != "COMBO" and not types_compatible(declared, spec.type):
                problems.append(f"{where}: input {name!r} is saved with type {declared!r} but "
                                f"{nodedef.name} declares {spec.type!r}")
            link_id = inp.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None:
                problems.append(f"{where}: input {name!r} refers to link {link_id}, which is not "
                                "in the links list (dangling link)")
                continue
            if link[3] != nid or link[4] != slot:
                problems.append(f"{where}: input {name!r} refers to link {link_id}, but that "
                                f"link ends at node {link[3]} slot {link[4]}")
            linked.add(name)
        values, mapped = _ui_widget_values(node, nodedef, where, problems)
        for name, value in values.items():
            if name in linked:
                continue
            why = _value_problem(nodedef.inputs[name], value)
            if why:
                problems.append(f"{where}: widget {name!r} {why}")
        for spec in nodedef.inputs.values():
            if spec.is_widget and not mapped:
                continue   # the count problem is already reported
            if spec.required and spec.name not in linked and not (
                    spec.is_widget and spec.name in values):
                what = "value" if spec.is_widget else f"link from a {spec.type} output"
                problems.append(f"{where}: required input {spec.name!r} has no {what}")
        outs = node.get("outputs") or []
        if len(outs) > len(nodedef.outputs):
            problems.append(f"{where}: saved with {len(outs)} outputs but {nodedef.name} has "
                            f"{len(nodedef.outputs)}")
        for slot, out in enumerate(outs[:len(nodedef.outputs)]):
            declared = str(out.get("type", nodedef.outputs[slot]))
            if not types_compatible(declared, nodedef.outputs[slot]):
                problems.append(f"{where}: output slot {slot} is saved with type {declared!r} but "
                                f"{nodedef.name} returns {nodedef.outputs[slot]!r} there")
            for link_id in out.get("links") or []:
                if link_id not in links:
                    problems.append(f"{where}: output slot {slot} lists link {link_id}, which is "
                                    "not in the links list (dangling link)")

    for link_id, (_, src, src_slot, dst, dst_slot, link_type, *_rest) in links.items():
        where = f"link {link_id}"
        if src not in nodes:
            problems.append(f"{where}: source node {src} does not exist (dangling link)")
            continue
        if dst not in nodes:
            problems.append(f"{where}: target node {dst} does not exist (dangling link)")
            continue
        src_def, dst_def = defs.get(str(nodes[src].get("type"))), defs.get(
            str(nodes[dst].get("type")))
        if src_def is None or dst_def is None:
            continue   # already reported as an unknown node
        if not 0 <= src_slot < len(src_def.outputs):
            problems.append(f"{where}: node {src} ({src_def.name}) has no output slot {src_slot} "
                            f"(it has {len(src_def.outputs)})")
            continue
        dst_inputs = nodes[dst].get("inputs") or []
        if not 0 <= dst_slot < len(dst_inputs):
            problems.append(f"{where}: node {dst} ({dst_def.name}) has no input slot {dst_slot} "
                            f"(it has {len(dst_inputs)})")
            continue
        name = dst_inputs[dst_slot].get("name")
        spec = dst_def.inputs.get(name)
        if dst_inputs[dst_slot].get("link") != link_id:
            problems.append(f"{where}: node {dst} input {name!r} does not refer back to it")
        out_type = src_def.outputs[src_slot]
        if spec is not None and not types_compatible(out_type, spec.type):
            problems.append(f"{where}: type mismatch: {src_def.name} (node {src}) output "
                            f"{src_def.output_names[src_slot]!r} is {out_type}, but "
                            f"{dst_def.name} (node {dst}) input {name!r} takes {spec.type}")
        elif not types_compatible(str(link_type), out_type):
            problems.append(f"{where}: saved with type {link_type!r} but {src_def.name} output "
                            f"{src_slot} is {out_type}")
    return problems


def _link_list(link: Any) -> Any:
    """Schema 0.4 saves links as lists; schema 1 as objects. Lists either way."""
    if isinstance(link, Mapping):
        return [link.get("id"), link.get("origin_id"), link.get("origin_slot"),
                link.get("target_id"), link.get("target_slot"), link.get("type")]
    return link


def ui_to_api(workflow: Mapping, defs: NodeDefs) -> dict[str, dict]:
    """The API-format graph a UI workflow queues (active, non-virtual nodes), as the
    frontend builds it: widget values by name, linked inputs as [source_id, slot]."""
    links = {link[0]: link for link in map(_link_list, workflow["links"])}
    api: dict[str, dict] = {}
    for node in workflow["nodes"]:
        type_name = str(node.get("type"))
        if type_name in VIRTUAL_NODES or node.get("mode") not in ACTIVE_MODES:
            continue
        nodedef = defs.get(type_name)
        if nodedef is None:
            raise ScienceT2IError(_unknown_node(f"node {node.get('id')}", type_name, defs))
        inputs = dict(_ui_widget_values(node, nodedef, "", [])[0])
        for inp in node.get("inputs") or []:
            link = links.get(inp.get("link"))
            if link is not None:
                inputs[inp["name"]] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"class_type": type_name, "inputs": inputs}
    return api


# ----------------------------------------------------------------------------- API format

def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _check_api(workflow: Mapping, defs: NodeDefs) -> list[str]:
    problems: list[str] = []
    for nid, node in workflow.items():
        type_name = str(node.get("class_type"))
        nodedef = defs.get(type_name)
        if nodedef is None:
            problems.append(_unknown_node(f"node {nid}", type_name, defs))
            continue
        where = f"node {nid} ({type_name})"
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            problems.append(f"{where}: \"inputs\" must be an object of input name -> value")
            continue
        for name, value in inputs.items():
            spec = nodedef.inputs.get(name)
            if spec is None:
                problems.append(_unknown_input(where, name, nodedef))
                continue
            if _is_link(value):
                src_id = str(value[0])
                src = workflow.get(src_id)
                if src is None:
                    problems.append(f"{where}: input {name!r} links to node {src_id}, which does "
                                    "not exist (dangling link)")
                    continue
                src_def = defs.get(str(src.get("class_type")))
                if src_def is None:
                    continue
                if not 0 <= value[1] < len(src_def.outputs):
                    problems.append(f"{where}: input {name!r} links to output {value[1]} of node "
                                    f"{src_id} ({src_def.name}), which has "
                                    f"{len(src_def.outputs)} outputs")
                    continue
                out_type = src_def.outputs[value[1]]
                if not types_compatible(out_type, spec.type):
                    problems.append(f"{where}: type mismatch: input {name!r} takes {spec.type} "
                                    f"but node {src_id} ({src_def.name}) output "
                                    f"{src_def.output_names[value[1]]!r} is {out_type}")
            elif not spec.is_widget:
                problems.append(f"{where}: input {name!r} takes a link from a {spec.type} "
                                f"output, not the value {value!r}")
            else:
                why = _value_problem(spec, value)
                if why:
                    problems.append(f"{where}: input {name!r} {why}")
        for spec in nodedef.inputs.values():
            if spec.required and spec.name not in inputs:
                what = "value" if spec.is_widget else f"link from a {spec.type} output"
                problems.append(f"{where}: required input {spec.name!r} is missing (needs a "
                                f"{what})")
    return problems


# ----------------------------------------------------------------------------- entry points

def check_workflow(workflow: Mapping | str | Path, defs: NodeDefs | None = None) -> list[str]:
    """Every problem found in one workflow (either format); empty when it is sound."""
    if not isinstance(workflow, Mapping):
        workflow = load_workflow(workflow)
    defs = load_node_defs() if defs is None else defs
    if workflow_format(workflow) == "ui":
        return _check_ui(workflow, defs)
    return _check_api(workflow, defs)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if _is_link(a) and _is_link(b):
        return str(a[0]) == str(b[0]) and a[1] == b[1]
    return a == b


def check_twins(ui: Mapping, api: Mapping, defs: NodeDefs | None = None) -> list[str]:
    """Where a UI workflow and its API twin differ (node ids, classes, values, links)."""
    defs = load_node_defs() if defs is None else defs
    if workflow_format(ui) != "ui" or workflow_format(api) != "api":
        raise ScienceT2IError("check_twins takes a UI-format workflow and an API-format one")
    from_ui = ui_to_api(ui, defs)
    problems: list[str] = []
    for nid in sorted(set(from_ui) - set(api), key=_id_order):
        problems.append(f"node {nid} ({from_ui[nid]['class_type']}) is in the UI workflow but not "
                        "in the API workflow")
    for nid in sorted(set(api) - set(from_ui), key=_id_order):
        problems.append(f"node {nid} ({api[nid].get('class_type')}) is in the API workflow but "
                        "not in the UI workflow")
    for nid in sorted(set(from_ui) & set(api), key=_id_order):
        a, b = from_ui[nid], api[nid]
        if a["class_type"] != b.get("class_type"):
            problems.append(f"node {nid} is {a['class_type']} in the UI workflow but "
                            f"{b.get('class_type')} in the API workflow")
            continue
        where = f"node {nid} ({a['class_type']})"
        ui_in, api_in = a["inputs"], b.get("inputs") or {}
        for name in sorted(set(ui_in) | set(api_in)):
            if name not in api_in:
                problems.append(f"{where}: input {name!r} is set in the UI workflow "
                                f"({_show(ui_in[name])}) but not in the API workflow")
            elif name not in ui_in:
                problems.append(f"{where}: input {name!r} is set in the API workflow "
                                f"({_show(api_in[name])}) but not in the UI workflow")
            elif not _same_value(ui_in[name], api_in[name]):
                problems.append(f"{where}: input {name!r} is {_show(ui_in[name])} in the UI "
                                f"workflow but {_show(api_in[name])} in the API workflow")
    return problems


def _id_order(nid: str) -> tuple[int, str]:
    return (int(nid), nid) if nid.isdigit() else (1 << 30, nid)


def _show(value: Any) -> str:
    if _is_link(value):
        return f"a link from node {value[0]} output {value[1]}"
    return repr(value)


def twin_path(path: str | Path) -> Path:
    """workflows/NAME.json <-> workflows/api/NAME.json."""
    path = Path(path)
    if path.parent.name == "api":
        return path.parent.parent / path.name
    return path.parent / "api" / path.name


def validate_files(paths: Iterable[str | Path], defs: NodeDefs | None = None,
                   twins: bool = True) -> dict[Path, list[str]]:
    """Problems per file; with ``twins``, a UI file whose API twin exists (or the reverse)
    is also compared with it."""
    defs = load_node_defs() if defs is None else defs
    report: dict[Path, list[str]] = {}
    for path in map(Path, paths):
        try:
            workflow = load_workflow(path)
            problems = check_workflow(workflow, defs)
            twin = twin_path(path)
            if twins and twin.is_file():
                other = load_workflow(twin)
                fmt, other_fmt = workflow_format(workflow), workflow_format(other)
                if fmt == other_fmt:
                    problems.append(f"its twin {twin} is also in {fmt.upper()} format; "
                                    f"{'workflows/api/' if fmt == 'ui' else 'workflows/'} "
                                    "holds the other format")
                else:
                    ui, api = (workflow, other) if fmt == "ui" else (other, workflow)
                    problems += [f"twin {twin.name}: {p}" for p in check_twins(ui, api, defs)]
        except ScienceT2IError as exc:
            problems = [str(exc)]
        report[path] = problems
    return report
