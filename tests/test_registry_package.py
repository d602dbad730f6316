"""The package as the Comfy registry sees it: comfy-cli's own `comfy node validate` and
`comfy node pack` on a copy of the repository's files, the archive's contents, and the one
`exec` the registry's security scan would flag (explained in SECURITY.md)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The repository's files (tracked and new, not ignored) in a fresh git repository."""
    dest = tmp_path_factory.mktemp("pack") / "comfyui-science-t2i"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


def _comfy(args, cwd, home):
    env = dict(os.environ, HOME=str(home), DO_NOT_TRACK="1")
    comfy = Path(sys.executable).with_name("comfy")
    return subprocess.run([str(comfy), "--skip-prompt", "--no-json", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_comfy_node_validate_passes_without_warnings(checkout, tmp_path):
    out = _comfy(["node", "validate"], checkout, tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "All validation checks passed" in text, text
    assert "Warning" not in text and "Security warnings" not in text, text


@pytest.fixture(scope="module")
def packed(checkout, tmp_path_factory):
    out = _comfy(["node", "pack"], checkout, tmp_path_factory.mktemp("home"))
    assert out.returncode == 0, out.stdout + out.stderr
    return checkout / "node.zip"


def test_comfy_node_pack_holds_the_pack_and_no_tests(packed):
    names = set(zipfile.ZipFile(packed).namelist())
    for needed in ("__init__.py", "LICENSE", "SECURITY.md", "pyproject.toml", "requirements.txt",
                   "nodes/sciscore/node_classes.py", "nodes/judges/bench_sample.jsonl",
                   "workflows/score_and_rank.json", "workflows/score_and_rank.jpg",
                   "workflows/api/rollout.json", "web/js/science_t2i.js", "web/js/summary.js",
                   "web/docs/ScienceT2I_SciScore.md", "training/configs/sft.yaml"):
        assert needed in names, needed
    assert any(n.startswith("nodes/prompts/knowledge/") for n in names)
    dev = [n for n in names if n.split("/")[0] in ("tests", "benchmarks", ".ci", ".github")]
    assert dev == []


def test_pyproject_has_what_the_registry_reads():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["license"] == {"file": "LICENSE"} and (ROOT / "LICENSE").is_file()
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert project["urls"]["Repository"].startswith("https://github.com/")
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy[key], key
    assert comfy["requires-comfyui"].startswith(">=0.3.")


def test_the_only_exec_is_the_sandboxed_run(packed, tmp_path):
    """ruff's S102/S307 over the archive with every noqa ignored (what a reviewer's scan
    sees): one exec, the figure sandbox's, which SECURITY.md explains; nothing else in the
    pack runs code it was given."""
    zipfile.ZipFile(packed).extractall(tmp_path / "x")
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", ".", "--select", "S102,S307", "--ignore-noqa",
                          "--no-cache", "--output-format", "concise"],
                         cwd=tmp_path / "x", capture_output=True, text=True)
    found = [line for line in out.stdout.splitlines() if ": S" in line]
    assert len(found) == 1 and found[0].startswith("nodes/imgcoder/sandbox_child.py:"), found
    assert "nodes/imgcoder/sandbox_child.py" in (ROOT / "SECURITY.md").read_text()
