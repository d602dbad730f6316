"""The figure sandbox's kernel layer (Landlock, seccomp, no capabilities) against hostile
programs of every class of escape, with the Python-level guards switched off: each program
escapes a sandbox without the kernel's layer, and is stopped by the kernel's layer alone, as
root and as an ordinary user. Also: the node raises only its error type whatever the child
does, and the next render is unaffected."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sandbox_hostile import run_all
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.imgcoder import sandbox_kernel
from science_t2i.nodes.imgcoder.sandbox import UNSAFE_ENV, SandboxPool, kernel_gate

HERE = Path(__file__).resolve().parent
GOOD = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\n"


def test_this_machine_has_the_kernel_layer():
    ok, what = sandbox_kernel.support()
    assert ok, what   # CI must run the tests below for real


def test_every_escape_works_without_the_kernel_layer_and_none_with_it(tmp_path):
    without = run_all((), tmp_path / "a")
    assert all(without.values()), [n for n, escaped in without.items() if not escaped]
    kernel_only = run_all(("kernel",), tmp_path / "b")
    assert not any(kernel_only.values()), [n for n, e in kernel_only.items() if e]
    assert set(kernel_only) == set(without) and len(without) == 13


def test_the_kernel_layer_holds_for_an_ordinary_user(tmp_path):
    """The same programs from a process that is not root (a user namespace mapping it to
    nobody: no capabilities, the child not dropping anything)."""
    run = subprocess.run(["unshare", "--user", "--map-user=65534", "--map-group=65534",
                          sys.executable, str(HERE / "sandbox_hostile.py"), "kernel"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["uid"] == 65534
    assert not any(report["results"].values()), report["results"]


@pytest.fixture(scope="module")
def kernel_pool():
    with SandboxPool(spares=0, _layers=("kernel",)) as pool:
        yield pool


@pytest.mark.parametrize("name,code", [
    ("deeply nested status line",
     "import os\nfor fd in range(3, 12):\n    try:\n"
     "        os.write(fd, b'[' * 200000 + b'\\n')\n    except OSError:\n        pass\n"),
    ("a folder tree thousands deep",
     "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\n"),
    ("a stderr flood", "import os\nwhile True:\n    os.write(2, b'x' * 65536)\n"),
    ("the child killing itself", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"),
    ("a FIFO in place of the PNG", GOOD + "import os\nos.mkfifo('figure.png')\n"),
    ("a folder in place of the PNG", GOOD + "import os\nos.mkdir('figure.png')\n"),
])
def test_whatever_the_child_does_the_render_ends_in_a_result(kernel_pool, name, code):
    result = kernel_pool.render(code, width=64, height=48, _check=False)
    assert result.seconds < 20, (name, result)
    if "FIFO" in name:   # the renderer replaces it with the figure
        assert result.ok and result.png.startswith(b"\x89PNG"), result.error
    else:
        assert not result.ok and result.error, (name, result)
    # and the next render is unaffected
    again = kernel_pool.render(GOOD, width=64, height=48)
    assert again.ok and again.png.startswith(b"\x89PNG"), again.error


def test_the_node_raises_only_its_error_and_the_next_prompt_runs():
    from science_t2i.nodes.imgcoder.node_classes import RenderFigureCodeNode
    node = RenderFigureCodeNode()
    hostile = ("import os\nfor fd in range(3, 12):\n    try:\n"
               "        os.write(fd, b'{\"a\":' * 100000 + b'\\n')\n"
               "    except OSError:\n        pass\n" + GOOD)
    with pytest.raises(ScienceT2IError):
        node.render(hostile, 64, 48, 100)
    image = node.render(GOOD, 64, 48, 100)[0]
    assert tuple(image.shape) == (1, 48, 64, 3)


def test_without_the_kernel_mechanisms_model_code_is_refused(monkeypatch):
    monkeypatch.setattr(sandbox_kernel, "support", lambda: (False, "this is a test system"))
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    with pytest.raises(ScienceT2IError, match=rf"this is a test system.*{UNSAFE_ENV}=1"):
        SandboxPool(spares=0)
    monkeypatch.setenv(UNSAFE_ENV, "1")
    assert kernel_gate(("kernel", "python")) == ("python",)


def test_the_seccomp_program_allows_only_this_pid():
    """The filter as the kernel reads it: 8-byte instructions, every jump inside it."""
    import struct
    prog = sandbox_kernel.seccomp_program("x86_64", 4242)
    assert all(len(i) == 8 for i in prog) and len(prog) < 4096
    for n, ins in enumerate(prog):
        code, jt, jf, k = struct.unpack("<HBBI", ins)
        if code & 0x07 == 0x05:   # BPF_JMP
            assert n + 1 + max(jt, jf) < len(prog)
    assert any(struct.unpack("<HBBI", i)[3] == 4242 for i in prog)
