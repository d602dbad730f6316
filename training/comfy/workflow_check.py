"""Static checks of ComfyUI workflow JSON against the node definitions it uses.

Two formats are understood:

- UI format, what ComfyUI's frontend saves: ``{"nodes": [{id, type, inputs, outputs,
  widgets_values, mode, ...}], "links": [[id, from_node, from_slot, to_node, to_slot, type]]}``;
- API format, what ``POST /prompt`` and ``comfy run`` take: ``{node_id: {"class_type": ...,
  "inputs": {name: value | [source_node_id, output_index]}}}``.

Node definitions come from the pack's own classes (``INPUT_TYPES`` / ``RETURN_TYPES``, read
directly) and from ``core_nodes.json``, a recorded copy of the signatures of the ComfyUI
core nodes the workflows use (ComfyUI itself cannot be installed from a package registry, so CI
checks against this record). ``check_workflow`` reports unknown nodes, unknown or missing
inputs, dangling links, out-of-range slots, type mismatches, bad widget values and widget
counts; ``check_twins`` reports where a UI workflow and its API twin describe different graphs.
Each problem is one line naming the node, the input and what to change.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from ...nodes.errors import ScienceT2IError
from .node_defs import (VIRTUAL_NODES, NodeDefs, load_node_defs, types_compatible, unknown_input,
                        unknown_node, value_problem)
from .workflow_ui import check_ui, ui_to_api

# ----------------------------------------------------------------------------- loading

def load_workflow(path: str | Path) -> dict:
    from ..core.readers import read_json
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
            problems.append(unknown_node(f"node {nid}", type_name, defs))
            continue
        where = f"node {nid} ({type_name})"
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            problems.append(f"{where}: \"inputs\" must be an object of input name -> value")
            continue
        for name, value in inputs.items():
            spec = nodedef.inputs.get(name)
            if spec is None:
                problems.append(unknown_input(where, name, nodedef))
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
                why = value_problem(spec, value)
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
        return check_ui(workflow, defs)
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
