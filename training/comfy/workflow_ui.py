"""Checking UI-format workflows (what ComfyUI's frontend saves: nodes with widgets_values,
and a links list), and turning them into API format as the frontend does."""
from __future__ import annotations

from typing import Any, Mapping

from ...nodes.errors import ScienceT2IError
from .node_defs import (ACTIVE_MODES, CONTROL_VALUES, VIRTUAL_NODES, NodeDef, NodeDefs,
                        types_compatible, unknown_input, unknown_node, value_problem)


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


def check_ui(workflow: Mapping, defs: NodeDefs) -> list[str]:
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
        if type_name in VIRTUAL_NODES:
            continue
        nodedef = defs.get(type_name)
        if nodedef is None:
            problems.append(unknown_node(f"node {nid}", type_name, defs))
        elif node.get("mode") in ACTIVE_MODES:   # muted / bypassed nodes are not run
            _check_ui_node(nid, node, nodedef, links, problems)
    for link_id, link in links.items():
        _check_ui_link(link_id, link, nodes, defs, problems)
    return problems


def _check_ui_node(nid: Any, node: Mapping, nodedef: NodeDef, links: dict[int, list],
                   problems: list[str]) -> None:
    """One active node's inputs, widget values and outputs against its definition."""
    type_name = nodedef.name
    where = f"node {nid} ({type_name})"
    linked: set[str] = set()
    for slot, inp in enumerate(node.get("inputs") or []):
        name = inp.get("name")
        spec = nodedef.inputs.get(name)
        if spec is None:
            problems.append(unknown_input(f"{where} input slot {slot}", name, nodedef))
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
        why = value_problem(nodedef.inputs[name], value)
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


def _check_ui_link(link_id: int, link: list, nodes: dict[int, Mapping], defs: NodeDefs,
                   problems: list[str]) -> None:
    """One link: both ends exist, the slots exist and refer back, the types fit."""
    _, src, src_slot, dst, dst_slot, link_type, *_rest = link
    where = f"link {link_id}"
    if src not in nodes:
        problems.append(f"{where}: source node {src} does not exist (dangling link)")
        return
    if dst not in nodes:
        problems.append(f"{where}: target node {dst} does not exist (dangling link)")
        return
    src_def, dst_def = defs.get(str(nodes[src].get("type"))), defs.get(
        str(nodes[dst].get("type")))
    if src_def is None or dst_def is None:
        return   # already reported as an unknown node
    if not 0 <= src_slot < len(src_def.outputs):
        problems.append(f"{where}: node {src} ({src_def.name}) has no output slot {src_slot} "
                        f"(it has {len(src_def.outputs)})")
        return
    dst_inputs = nodes[dst].get("inputs") or []
    if not 0 <= dst_slot < len(dst_inputs):
        problems.append(f"{where}: node {dst} ({dst_def.name}) has no input slot {dst_slot} "
                        f"(it has {len(dst_inputs)})")
        return
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
            raise ScienceT2IError(unknown_node(f"node {node.get('id')}", type_name, defs))
        inputs = dict(_ui_widget_values(node, nodedef, "", [])[0])
        for inp in node.get("inputs") or []:
            link = links.get(inp.get("link"))
            if link is not None:
                inputs[inp["name"]] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"class_type": type_name, "inputs": inputs}
    return api
