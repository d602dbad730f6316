"""The pack loads the two ways it is used: from ComfyUI's custom_nodes/ under any folder name,
and as the pip-installed package ``science_t2i``. Each check runs in a fresh interpreter so
module caches of this test session cannot hide a broken import."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What ComfyUI's nodes.load_custom_node does for a folder in custom_nodes/.
COMFY_LOADER = textwrap.dedent("""
    import importlib.util, json, os, sys
    module_path = sys.argv[1]
    sys_module_name = module_path.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(
        sys_module_name, os.path.join(module_path, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[sys_module_name] = module
    spec.loader.exec_module(module)
    print(json.dumps({
        "nodes": sorted(module.NODE_CLASS_MAPPINGS),
        "display": sorted(module.NODE_DISPLAY_NAME_MAPPINGS),
        "categories": sorted({c.CATEGORY for c in module.NODE_CLASS_MAPPINGS.values()}),
        "installed_package_imported": "science_t2i" in sys.modules,
        "pack_modules": sorted(m for m in sys.modules if m.startswith(sys_module_name)),
    }))
""")


def _run(code: str, *args: str, cwd: Path) -> dict:
    import json
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_loads_from_custom_nodes_under_another_folder_name(tmp_path):
    custom = tmp_path / "ComfyUI" / "custom_nodes"
    custom.mkdir(parents=True)
    folder = custom / "Science-T2I.pack_v2"  # dots and dashes, as git clone names allow
    folder.symlink_to(REPO, target_is_directory=True)
    out = _run(COMFY_LOADER, str(folder), cwd=tmp_path)
    assert "ScienceT2I_SciScore" in out["nodes"] and "ScienceT2I_SciScoreLoader" in out["nodes"]
    assert out["nodes"] == out["display"]
    assert all(c.startswith("Science-T2I/") for c in out["categories"])
    # every pack module was imported relatively, under ComfyUI's name for the folder
    assert not out["installed_package_imported"]
    assert any(m.endswith(".nodes.sciscore") for m in out["pack_modules"])


def test_imports_as_the_installed_package(tmp_path):
    out = _run(textwrap.dedent("""
        import json, science_t2i
        from science_t2i.nodes.sciscore import load_sciscore, DEFAULT_SCISCORE
        from science_t2i.training.cli import build_parser
        build_parser()
        print(json.dumps({"nodes": sorted(science_t2i.NODE_CLASS_MAPPINGS),
                          "default": DEFAULT_SCISCORE}))
    """), cwd=tmp_path)
    assert "ScienceT2I_SciScorePairwise" in out["nodes"]
    assert out["default"] == "Jialuo21/SciScore"
