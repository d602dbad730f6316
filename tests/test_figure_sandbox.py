"""The figure sandbox (nodes/imgcoder/sandbox.py): model-written matplotlib code runs in a child
process and comes back as a PNG or a clear error, never harming the process that asked.

Hostile programs are run twice where the static check refuses them: once through check_code,
once with the check skipped (``_check=False``), so the run-time guards are shown to hold on
their own. Each run must leave nothing outside the sandbox's folder: a sentinel fixture points
HOME at a test folder and compares the test's folders, the project's and the pool's before and
after.
"""
from __future__ import annotations

import io
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.imgcoder import sandbox as fs
from science_t2i.nodes.imgcoder.code_check import ALLOWED_IMPORTS, check_code
from science_t2i.nodes.imgcoder.sandbox import SandboxLimits, SandboxPool, render_figure

REPO = Path(__file__).resolve().parents[1]
FIGURES = sorted((Path(__file__).parent / "figures").glob("*.py"))
FAST = SandboxLimits(cpu_seconds=3, wall_seconds=8, memory_mb=1024, output_mb=8, stdout_kb=16)
SMALL = {"width": 320, "height": 240, "dpi": 80}

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs Linux or macOS")


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sandbox-pool")


@pytest.fixture(scope="module")
def pool(pool_dir):
    # two spares: on two cores the next children warm up while a render runs
    with SandboxPool(spares=2, temp_dir=str(pool_dir)) as p:
        p.prestart()
        yield p


def _tree(root: Path) -> dict:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1)
            for p in root.rglob("*")}


@pytest.fixture
def sentinel(tmp_path, monkeypatch, pool_dir, pool):
    """HOME is a test folder holding a secret; after the test, nothing new exists in it, in the
    test's folders, the project or /tmp, and the used child's folder is gone."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_text("the secret\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SCIENCE_T2I_TEST_SECRET", "hunter2-api-key")
    before = _tree(tmp_path)
    yield home
    assert _tree(tmp_path) == before, "the code changed files outside its sandbox folder"
    # the project is shared with other work in progress: look for what the code aimed at
    for folder in (REPO, REPO / "nodes", REPO / "tests", Path("/tmp")):
        assert not [p for p in os.listdir(folder) if "pwned" in p], folder
    (root,) = [p for p in pool_dir.iterdir() if p.name.startswith("science-t2i-sandbox-")]
    runs = [p for p in root.iterdir() if p.name.startswith("run-")]
    assert len(runs) <= pool.spares + 1, "a used child's folder was left behind"


@dataclass
class Hostile:
    name: str
    code: str
    runtime: str              # regex the run-time error must match
    static: str | None = None  # regex check_code's problems must match (None: it passes)
    limits: SandboxLimits = FAST


PWNED = "{home}/pwned.txt"
HOSTILE = [
    Hostile("infinite loop (CPU limit)", "x = 0\nwhile True:\n    x += 1\n",
            r"CPU time limit \(1 s\).*line [23]",
            limits=SandboxLimits(cpu_seconds=1, wall_seconds=20, memory_mb=1024)),
    Hostile("busy wait (wall limit)", "while True: pass\n",
            r"Wall-clock time limit \(1 s\).*line 1",
            limits=SandboxLimits(cpu_seconds=20, wall_seconds=1, memory_mb=1024)),
    Hostile("wall limit with the timer swallowed (the parent's kill)",
            "while True:\n    try:\n        while True:\n            pass\n"
            "    except BaseException:\n        pass\n",
            r"Wall-clock time limit \(1 s\) exceeded: the code was still running",
            limits=SandboxLimits(cpu_seconds=30, wall_seconds=1, memory_mb=1024)),
    Hostile("fork bomb", "fork = print.__globals__['os'].fork\nwhile True:\n    fork()\n",
            r"Blocked: the sandbox refused os\.fork.*line 3", r"__globals__"),
    Hostile("fork bomb through matplotlib.os",
            "import matplotlib\nwhile True:\n    matplotlib.os.fork()\n",
            r"Blocked: the sandbox refused matplotlib\.os.*line 3", r"'os' is not allowed"),
    Hostile("50 GB numpy allocation",
            "import numpy as np\nhuge = np.ones(50 * 1024**3 // 8)\n",
            r"Memory limit \(1024 MB\) exceeded at line 2"),
    Hostile("import os", f"import os\nos.system('touch {PWNED}')\n",
            r"refused importing 'os'.*line 1", r"line 1: import of 'os' is not allowed"),
    Hostile("import subprocess", f"import subprocess\nsubprocess.run(['touch', '{PWNED}'])\n",
            r"refused importing 'subprocess'", r"import of 'subprocess'"),
    Hostile("import socket", "import socket\nsocket.create_connection(('example.com', 80))\n",
            r"refused importing 'socket'", r"import of 'socket'"),
    Hostile("import ctypes", "import ctypes\nctypes.CDLL(None).system(b'id')\n",
            r"refused importing 'ctypes'", r"import of 'ctypes'"),
    Hostile("ctypes reached by introspection",
            "ctypes = print.__globals__['sys'].modules['ctypes']\nctypes.CDLL(None)\n",
            r"refused ctypes\.dlopen.*line 2", r"__globals__"),
    Hostile("__import__ of a built name", "m = __import__('o' + 's')\nm.system('id')\n",
            r"refused importing 'os'.*line 1", r"__import__"),
    Hostile("importlib.import_module",
            "import importlib\nimportlib.import_module('os').system('id')\n",
            r"refused importing 'importlib'", r"import of 'importlib'"),
    Hostile("os.system through object.__subclasses__",
            "wrap = [c for c in ().__class__.__base__.__subclasses__()\n"
            "        if c.__name__ == '_wrap_close'][0]\n"
            f"wrap.__init__.__globals__['system']('touch {PWNED}')\n",
            r"refused os\.system.*line 3", r"'__subclasses__' is not allowed"),
    Hostile("os.popen through object.__subclasses__",
            "wrap = [c for c in ().__class__.__base__.__subclasses__()\n"
            "        if c.__name__ == '_wrap_close'][0]\n"
            "print(wrap.__init__.__globals__['popen']('id').read())\n",
            r"refused os\.popen.*line 3", r"'__globals__' is not allowed"),
    Hostile("_posixsubprocess.fork_exec (no audit event)",
            "fe = print.__globals__['sys'].modules['_posixsubprocess'].fork_exec\nfe()\n",
            r"refused _posixsubprocess\.fork_exec", r"__globals__"),
    Hostile("open('/etc/passwd')", "print(open('/etc/passwd').read())\n",
            r"refused reading '/etc/passwd'.*line 1"),
    Hostile("reading a file in HOME", "print(open('{home}/secret.txt').read())\n",
            r"refused reading '.*/home/secret\.txt'"),
    Hostile("listing HOME", "print(print.__globals__['os'].listdir('{home}'))\n",
            r"refused listing '.*/home'", r"__globals__"),
    Hostile("open(~/pwned.txt, 'w')", f"open('{PWNED}', 'w').write('x')\n",
            r"refused open\(\) for writing", r"open\(\) may only read"),
    Hostile("numpy writing into HOME", f"import numpy as np\nnp.savetxt('{PWNED}', [1, 2])\n",
            r"refused writing '.*/home/pwned\.txt'.*line 2"),
    Hostile("matplotlib imsave into the project",
            "import matplotlib.pyplot as plt\nimport numpy as np\n"
            f"plt.imsave('{REPO}/pwned.png', np.zeros((4, 4)))\n",
            r"refused writing '.*pwned\.png'.*line 3"),
    Hostile("symlink out of the folder",
            "print.__globals__['os'].symlink('/etc/passwd', 'passwd')\n",
            r"refused os\.symlink", r"__globals__"),
    Hostile("exec of a built string", "exec('imp' + 'ort os')\n",
            r"refused exec\(\)", r"exec\(\) is not allowed"),
    Hostile("eval of a built string", "eval('__imp' + 'ort__(\"os\")')\n",
            r"refused eval\(\)", r"eval\(\) is not allowed"),
    Hostile("frame escape through a traceback",
            "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n"
            "    g = e.__traceback__.tb_frame.f_back.f_globals\n",
            r"refused access to the attribute 'tb_frame'.*line 4", r"'__traceback__'"),
    Hostile("figsize=(100000, 100000)",
            "import matplotlib.pyplot as plt\nfig = plt.figure(figsize=(100000, 100000))\n"
            "fig.gca().plot([1, 2])\n", r"figure of 10000000 x 10000000 px, more than"),
    Hostile("drawing a 100000 x 100000 px canvas",
            "import matplotlib.pyplot as plt\nplt.figure(figsize=(1000, 1000), dpi=100)\n"
            "plt.tight_layout()\n", r"draw a 100000 x 100000 px canvas.*line 3"),
    Hostile("huge print output", "for i in range(10**6):\n    print('spam' * 100)\n",
            r"Output limit exceeded: the code printed more than 16 KB.*line 2"),
    Hostile("a 1 GB file in the sandbox folder",
            "import numpy as np\nnp.save('big.npy', np.zeros(2**30, dtype=np.uint8))\n",
            r"Output limit exceeded: the code wrote more than 8 MB of files.*line 2",
            limits=SandboxLimits(cpu_seconds=5, wall_seconds=10, memory_mb=2048, output_mb=8)),
    Hostile("filling the disk with many files",
            "import numpy as np\nfor i in range(10**6):\n"
            "    np.save(f'junk{i}.npy', np.zeros(10**5))\n",
            r"refused writing more than 16 files.*line 3"),
    Hostile("a directory file descriptor (dir_fd escapes)",
            "os = print.__globals__['os']\nfd = os.open('.', os.O_RDONLY)\n"
            "print(os.open('../../../etc/passwd', os.O_RDONLY, dir_fd=fd))\n",
            r"refused opening the folder .*line 2", r"__globals__"),
    Hostile("syntax error", "import matplotlib.pyplot as plt\nplt.plot([1, 2]\nx = 3\n",
            r"SyntaxError at line 2: '\(' was never closed", r"line 2: syntax error"),
    Hostile("no figure", "x = [i * i for i in range(10)]\n", r"created no figure; create one"),
    Hostile("exception in the code",
            "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
            "ax.plot([1, 2, 3], [1, 2])\n",
            r"raised ValueError: x and y must have same first dimension.*line 3: "
            r"`ax\.plot\(\[1, 2, 3\], \[1, 2\]\)`"),
    Hostile("raise SystemExit", "import matplotlib.pyplot as plt\nplt.plot([1])\n"
            "raise SystemExit(0)\n", r"tried to exit.*line 3", r"raising SystemExit"),
    Hostile("exit()", "import matplotlib.pyplot as plt\nplt.plot([1])\nexit(0)\n",
            r"refused exit\(\).*line 3", r"exit\(\) must not be called"),
    Hostile("matplotlib.use('TkAgg')", "import matplotlib\nmatplotlib.use('TkAgg')\n"
            "import matplotlib.pyplot as plt\nplt.plot([1])\nplt.show()\n",
            r"refused the 'TkAgg' backend.*line 2", r"backend 'TkAgg' is not available"),
    Hostile("LaTeX (text.usetex)", "import matplotlib.pyplot as plt\n"
            "plt.rcParams['text.usetex'] = True\nplt.title('$x^2$')\nplt.plot([1, 4])\n",
            r"LaTeX \(text\.usetex=True\) is not available.*mathtext", r"line 2: LaTeX"),
    Hostile("environment through matplotlib.os",
            "import matplotlib\nprint(dict(matplotlib.os.environ))\n",
            r"refused matplotlib\.os", r"'os' is not allowed"),
    Hostile("raising its own limits", "r = print.__globals__['sys'].modules['resource']\n"
            "r.setrlimit(r.RLIMIT_CPU, (-1, -1))\n", r"refused resource\.setrlimit",
            r"__globals__"),
    Hostile("a thread", "t = print.__globals__['sys'].modules['_thread']\n"
            "t.start_new_thread(print, ())\n", r"refused _thread\.start_new_thread",
            r"__globals__"),
    Hostile("a refusal swallowed by try/except",
            "try:\n    open('/etc/passwd').read()\nexcept OSError:\n    pass\n"
            "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n",
            r"refused reading '/etc/passwd'.*line 2"),
]


def _fill(code: str, home: Path) -> str:
    return code.replace("{home}", str(home))


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_code_is_stopped_at_run_time_with_a_clear_message(case, pool, sentinel):
    code = _fill(case.code, sentinel)
    result = pool.render(code, **SMALL, limits=case.limits, _check=False)
    assert not result.ok and result.png is None
    assert re.search(case.runtime, result.error), result.error
    assert "hunter2" not in result.error + result.stdout
    assert not (sentinel / "pwned.txt").exists() and not (REPO / "pwned.png").exists()


@pytest.mark.parametrize("case", [c for c in HOSTILE if c.static],
                         ids=[c.name for c in HOSTILE if c.static])
def test_the_static_check_refuses_what_it_can_see(case, tmp_path):
    problems = "; ".join(check_code(_fill(case.code, tmp_path)))
    assert re.search(case.static, problems), problems


def test_refused_code_is_not_run_and_the_message_names_the_lines(pool, sentinel):
    code = f"import os\nimport math\nos.system('touch {sentinel}/pwned.txt')\n"
    result = pool.render(code, **SMALL, limits=FAST)
    assert not result.ok and result.seconds < 0.5
    assert result.error.startswith("The code was refused before running: line 1: import of "
                                   "'os' is not allowed")
    assert "line 3: the attribute 'system'" in result.error


def test_a_100000_px_request_is_refused_before_any_drawing(pool):
    result = pool.render("import matplotlib.pyplot as plt\nplt.plot([1])\n", width=100_000,
                         height=100_000, limits=FAST)
    assert not result.ok and "100000 x 100000 px is more than the limit of 40,000,000" in \
        result.error


def test_environment_is_not_visible_even_through_introspection(pool, sentinel):
    code = ("import matplotlib.pyplot as plt\nenv = print.__globals__['os'].environ\n"
            "print(sorted(env))\nplt.plot([1, 2])\n")
    result = pool.render(code, **SMALL, limits=FAST, _check=False)
    assert "hunter2" not in result.stdout + result.error
    assert "SCIENCE_T2I_TEST_SECRET" not in result.stdout


@pytest.mark.parametrize("path", FIGURES, ids=[p.stem for p in FIGURES])
def test_real_figures_render_at_exactly_the_size_asked_and_deterministically(path, pool):
    code = path.read_text(encoding="utf-8")
    assert check_code(code) == []
    first = pool.render(code, width=800, height=600, dpi=100, limits=FAST)
    assert first.ok, first.error
    assert (first.width, first.height) == (800, 600)
    assert first.png[16:24] == (800).to_bytes(4, "big") + (600).to_bytes(4, "big")
    with Image.open(io.BytesIO(first.png)) as image:
        assert image.size == (800, 600) and image.format == "PNG"
        assert "Software" not in image.info
    second = pool.render(code, width=800, height=600, dpi=100, limits=FAST)
    assert second.png == first.png


def test_a_non_default_size_and_dpi_are_honoured(pool):
    code = (REPO / "tests" / "figures" / "function_plot.py").read_text(encoding="utf-8")
    result = pool.render(code, width=640, height=480, dpi=80, limits=FAST)
    assert result.ok, result.error
    with Image.open(io.BytesIO(result.png)) as image:
        assert image.size == (640, 480)
        assert [round(d) for d in image.info["dpi"]] == [80, 80]


def test_print_output_comes_back_savefig_is_skipped_a_closed_figure_is_rendered(pool):
    code = ("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 3, 2])\n"
            "print('peak at', 3)\nplt.savefig('/etc/own_copy.pdf', dpi=600)\nplt.close(fig)\n"
            "plt.show()\n")
    result = pool.render(code, **SMALL, limits=FAST)
    assert result.ok, result.error
    assert result.stdout == "peak at 3\n"
    assert (result.width, result.height) == (320, 240)


def test_library_features_that_load_lazily_or_warn_still_work(pool):
    # dates (time-zone data), a style file, a missing glyph and a numpy warning (both print
    # warnings), an optional import that is not there, __future__ annotations, a codec
    code = (
        "from __future__ import annotations\nimport datetime\nimport numpy as np\n"
        "import matplotlib.pyplot as plt\nimport matplotlib.dates as mdates\n"
        "try:\n    import seaborn\nexcept ImportError:\n    seaborn = None\n"
        "plt.style.use('ggplot')\nfig, (a, b) = plt.subplots(1, 2)\n"
        "days = [datetime.datetime(2024, 1, 1, h) for h in range(12)]\n"
        "a.plot(days, np.log(np.arange(12.0)))\n"
        "a.xaxis.set_major_formatter(mdates.DateFormatter('%H:%M'))\n"
        "b.set_title('Δx → ∞, 你好 ' + 'é'.encode('cp1252').decode('cp1252'))\n"
        "fig.autofmt_xdate()\n")
    assert check_code(code) == ["line 7: import of 'seaborn' is not allowed (allowed: "
                                + ", ".join(sorted(ALLOWED_IMPORTS)) + ")"]
    result = pool.render(code, **SMALL, limits=FAST, _check=False)
    assert result.ok, result.error


def test_concurrent_renders_from_threads(pool):
    code = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [{n}, 2])\n"
    results = [None, None]

    def work(i):
        results[i] = pool.render(code.format(n=i + 1), **SMALL, limits=FAST)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results), [r.error for r in results]
    assert results[0].png != results[1].png


def test_render_figure_uses_the_module_pool():
    result = render_figure("import matplotlib.pyplot as plt\nplt.plot([0, 1])\n", **SMALL)
    assert result.ok, result.error
    assert fs.default_pool() is fs.default_pool()


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 0}, "width must be a positive whole number"),
    ({"height": -5}, "height must be a positive whole number"),
    ({"width": 12.5}, "width must be a positive whole number"),
    ({"dpi": 0}, "dpi must be a positive number"),
    ({"limits": {"cpu_seconds": 1}}, "limits must be a SandboxLimits"),
    ({"code": None}, "the figure code must be a string"),
])
def test_bad_arguments_raise_a_clear_error(kwargs, message, pool):
    arguments = {"code": "import matplotlib.pyplot as plt\nplt.plot([1])\n", **kwargs}
    with pytest.raises(ScienceT2IError, match=message):
        pool.render(arguments.pop("code"), **arguments)


def test_bad_limits_raise_a_clear_error():
    with pytest.raises(ScienceT2IError, match=r"SandboxLimits\.cpu_seconds must be a positive"):
        SandboxLimits(cpu_seconds=0)
    with pytest.raises(ScienceT2IError, match=r"SandboxLimits\.memory_mb"):
        SandboxLimits(memory_mb=-1)


def test_check_code_accepts_ordinary_plotting_code():
    code = ("from __future__ import annotations\nimport math\nimport numpy as np\n"
            "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
            "plt.style.use('seaborn-v0_8-whitegrid')\nplt.rc('text', usetex=False)\n"
            "from matplotlib.patches import Circle\nfrom collections import namedtuple\n\n"
            "class Body:\n    def __init__(self, m):\n        self.m = m\n\n"
            "if __name__ == '__main__':\n    fig, ax = plt.subplots()\n"
            "    ax.add_patch(Circle((0, 0), 1))\n    data = open('data.txt').read()\n")
    assert check_code(code) == []
    empty = "line 1: the code is empty; write a matplotlib program that draws the figure"
    assert check_code("") == [empty]


def test_the_pool_cleans_up_its_children_and_folder(tmp_path):
    pool = SandboxPool(spares=1, temp_dir=str(tmp_path))
    pool.prestart()
    assert pool.wait_ready(120)
    children = list(pool._state["spares"])
    assert children and all(c.proc.poll() is None for c in children)
    pool.close()
    assert all(c.proc.returncode is not None for c in children)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ScienceT2IError, match="closed"):
        pool.render("import matplotlib.pyplot as plt\nplt.plot([1])\n", **SMALL)


@pytest.mark.parametrize("state, code, cpu, message", [
    ("timeout", -9, 0.5, r"Wall-clock time limit \(8 s\) exceeded: the code was still running"),
    ("eof", -24, 3.1, r"CPU time limit \(3 s\) exceeded at line 2: `while True: x \+= 1`"),
    ("eof", -9, 3.2, r"CPU time limit \(3 s\) exceeded"),
    ("eof", -9, 0.4, r"killed by the system.*too much memory \(limit 1024 MB\)"),
    ("eof", -25, 0.4, r"Output limit exceeded: the code wrote more than 8 MB"),
    ("eof", -11, 0.4, r"crashed \(SIGSEGV\) at line 2"),
    ("eof", 1, 0.4, r"Memory limit \(1024 MB\) exceeded"),
    ("eof", 0, 0.4, r"stopped without a result \(exit code 0\)"),
    ("overflow", 0, 0.4, r"Output limit exceeded: the code flooded"),
])
def test_exits_without_a_status_line_are_explained(state, code, cpu, message):
    class Child:  # what _explain_exit reads: stderr with a faulthandler dump or a traceback
        err = (b'Fatal Python error: Segmentation fault\n  File "<figure code>", line 2 in '
               b'<module>\n' + (b"MemoryError\n" if code == 1 else b""))

    source = "x = 0\nwhile True: x += 1\n"
    assert re.search(message, fs._explain_exit(Child(), state, code, cpu, FAST, source))


def test_the_render_node_survives_every_hostile_program(pool, sentinel, monkeypatch):
    """Render Figure Code called as ComfyUI calls it: each program ends in the node's error
    (refused before running, or failed in the sandbox), never in a crash of this process,
    and the next graph still renders."""
    from science_t2i.nodes.imgcoder import node_classes as imgcoder
    monkeypatch.setattr(fs, "default_pool", lambda: pool)
    node = imgcoder.RenderFigureCodeNode()
    outcomes = {}
    for case in HOSTILE:
        monkeypatch.setattr(imgcoder, "NODE_LIMITS", case.limits)
        with pytest.raises(ScienceT2IError) as err:
            getattr(node, node.FUNCTION)(code=_fill(case.code, sentinel), **SMALL)
        outcomes[case.name] = "refused" if "refused before running" in str(err.value) else \
            "failed" if "failed in the sandbox" in str(err.value) else str(err.value)
        assert not (sentinel / "pwned.txt").exists(), case.name
    assert set(outcomes.values()) == {"refused", "failed"}, outcomes
    assert sum(v == "refused" for v in outcomes.values()) == sum(1 for c in HOSTILE if c.static)
    image, _ = node.render("import matplotlib.pyplot as plt\nplt.figure()\n", **SMALL)
    assert tuple(image.shape) == (1, 240, 320, 3)


def test_root_is_dropped_only_where_others_can_reach_the_libraries():
    """Dropping to nobody must not cut the code's libraries off their own files: a Python
    under a private folder (/root is 0700, mktemp folders too) keeps root's uid instead."""
    import stat
    import tempfile

    from science_t2i.nodes.imgcoder.sandbox_child import _others_can_read
    base = Path(tempfile.mkdtemp(prefix="sandbox-perm-"))
    try:
        lib = base / "lib" / "matplotlib"
        lib.mkdir(parents=True)
        font = lib / "font.ttf"
        font.write_bytes(b"\0")
        for p in (base, base / "lib", lib):
            p.chmod(0o755)
        font.chmod(0o644)
        roots = {"package_roots": (str(lib),), "stdlib_roots": (), "font_files": {str(font)}}
        assert _others_can_read(roots)
        font.chmod(0o600)
        assert not _others_can_read(roots)                   # a font only root can read
        font.chmod(0o644)
        base.chmod(0o700)
        assert not _others_can_read(roots)                   # a private folder on the way
        base.chmod(0o755)
        missing = {**roots, "package_roots": (str(lib), str(base / "numpy.libs"))}
        assert _others_can_read(missing)                     # absent roots need no access
    finally:
        base.chmod(stat.S_IRWXU)
        import shutil
        shutil.rmtree(base)
