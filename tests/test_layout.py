"""The house rules of the layout (DESIGN.md), checked on the source: one room per capability,
small modules and functions, no import cycle, training -> nodes only, one ComfyUI bridge,
node classes in each room's node_classes.py, and the node ids saved workflows depend on."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACK = sorted(p for folder in ("nodes", "training") for p in (REPO / folder).rglob("*.py"))
SANDBOX_CHILD = REPO / "nodes" / "imgcoder" / "sandbox_child.py"   # runs by path, one file
COMFY_MODULES = {"folder_paths", "comfy", "comfy_api", "comfy_extras", "server", "execution",
                 "node_helpers", "latent_preview"}

# The node ids and display names saved workflows refer to: never change them.
NODE_IDS = {
    "ScienceT2I_SciScoreLoader": "SciScore Loader",
    "ScienceT2I_SciScore": "SciScore",
    "ScienceT2I_SciScoreRank": "SciScore Rank",
    "ScienceT2I_SciScorePairwise": "SciScore Pairwise",
    "ScienceT2I_ScoreOverlay": "SciScore Overlay",
    "ScienceT2I_SaveScoredImages": "Save Scored Images",
    "ScienceT2I_NormalizedDifference": "Normalized Difference (ND)",
    "ScienceT2I_PromptBuilder": "Science Prompt Builder",
    "ScienceT2I_ImplicitToExplicit": "Implicit to Explicit",
    "ScienceT2I_PromptTaskDetect": "Prompt Task Detect",
    "ScienceT2I_LoraLoader": "Science LoRA Loader",
    "ScienceT2I_GroundingDinoLoader": "GroundingDINO Loader",
    "ScienceT2I_SubjectMask": "Subject Mask",
    "ScienceT2I_MaskToLatentMask": "Mask to Latent Mask",
    "ScienceT2I_VLMJudgeLoader": "VLM Judge Loader",
    "ScienceT2I_ScienceJudge": "Science Judge (A or B)",
    "ScienceT2I_ScienceRubricJudge": "Science Rubric Judge (0-100)",
    "ScienceT2I_BenchRecords": "Science Bench Records",
    "ScienceT2I_BenchScore": "Science Bench Score (0-100)",
    "ScienceT2I_VisualQuiz": "Visual Quiz",
    "ScienceT2I_ImgCoder": "ImgCoder (figure as code)",
    "ScienceT2I_RenderFigureCode": "Render Figure Code",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module inside the pack, imported names) of every relative import, lazy ones
    included."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            out.append((".".join(base + ([node.module] if node.module else [])),
                        [a.name for a in node.names]))
    return out


def _room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in PACK + sorted((REPO / "benchmarks").glob("*.py")):
        if path == SANDBOX_CHILD:
            continue
        text = path.read_text()
        if path.parts[-2] != "benchmarks" and text.count("\n") > 500:
            long_modules.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > 80:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.name} ({size})")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_no_import_cycle_between_modules():
    modules = {_module_name(p): p for p in PACK}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names in _imports(path):
            for n in names:
                targets.add(f"{module}.{n}" if f"{module}.{n}" in modules else module)
        graph[name] = {t for t in targets if t in modules and t != name}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2
    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_training_stands_on_nodes_and_nothing_points_back():
    for path in PACK:
        if path.parts[len(REPO.parts)] != "nodes":
            continue
        for module, _ in _imports(path):
            assert not module.startswith("training"), f"{path.relative_to(REPO)} imports {module}"


def test_only_the_bridge_imports_comfyui():
    for path in PACK + [REPO / "__init__.py"]:
        if path.name == "_comfy.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            roots = {n.split(".")[0] for n in names}
            assert not roots & COMFY_MODULES, f"{path.relative_to(REPO)} imports {roots}"


def test_no_room_imports_another_rooms_private_names():
    for path in PACK:
        own = _room(_module_name(path))
        for module, names in _imports(path):
            if _room(module) == own:
                continue
            private = [n for n in names if n.startswith("_") and n != "_comfy"]
            assert not private, f"{path.relative_to(REPO)} takes {private} from {module}"


def test_the_node_ids_and_names_saved_workflows_use():
    from science_t2i.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    assert NODE_DISPLAY_NAME_MAPPINGS == NODE_IDS
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_IDS)
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        room = cls.__module__.split(".")[-2]
        assert cls.__module__.endswith(".node_classes"), (node_id, cls.__module__)
        assert cls.__name__.endswith("Node"), (node_id, cls.__name__)
        assert cls.CATEGORY.startswith("Science-T2I/"), (node_id, room)


@pytest.mark.parametrize("room", [
    "nodes.core", "nodes.sciscore", "nodes.prompts", "nodes.lmm", "nodes.judges", "nodes.masks",
    "nodes.lora", "nodes.imgcoder", "training.core", "training.flux", "training.sft",
    "training.stage2", "training.stage2.rewards", "training.sciscore", "training.eval",
    "training.eval.scigen", "training.generate", "training.comfy"])
def test_each_room_names_its_public_api(room):
    module = importlib.import_module(f"science_t2i.{room}")
    assert module.__doc__ and module.__all__
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, missing
    assert not [name for name in module.__all__ if name.startswith("_")]
