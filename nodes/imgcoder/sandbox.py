"""Render model-written matplotlib code into a PNG without running it in this process.

ImgCoder asks a language model for plotting code; that code is untrusted, so it runs in a child
process (``sandbox_child.py``, started by file path with ``python -I``) under resource
limits, an audit hook, restricted builtins and a minimal environment, and this side only reads
back a PNG and a status line. Bad code never raises here: it comes back as
``RenderResult(ok=False, error=...)`` with a one-paragraph message a model can repair from.
Only bad arguments raise ScienceT2IError.

Start-up (interpreter + matplotlib + a warm-up figure) costs about a second, so a SandboxPool
keeps a started child in reserve; each child renders once and exits.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ScienceT2IError
from . import sandbox_child as _child
from . import sandbox_fs
from .code_check import check_code
from .sandbox_fs import remove_tree as _remove_tree
from .sandbox_messages import explain_exit as _explain_exit

log = logging.getLogger("science_t2i")
CHILD_PATH = Path(_child.__file__).resolve()
_GRACE_SECONDS = 2.0  # the child stops itself at the wall limit; the kill is the backstop
_STOP_POLL_SECONDS = 0.25  # how often a waiting render asks should_stop (Cancel)
_STDERR_KEEP = 64 * 1024
_STDERR_FLOOD = 4 << 20   # a child writing more than this to stderr is stopped at once
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class SandboxLimits:
    """Per-render limits. memory_mb is what the code may allocate on top of the warm renderer
    (about 300 MB of address space); output_mb caps every file it writes, the PNG included."""
    cpu_seconds: float = 20
    wall_seconds: float = 30
    memory_mb: int = 2048
    output_mb: int = 32
    stdout_kb: int = 256
    max_pixels: int = 40_000_000

    def __post_init__(self):
        for name in ("cpu_seconds", "wall_seconds", "memory_mb", "output_mb", "stdout_kb",
                     "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ScienceT2IError(f"SandboxLimits.{name} must be a positive number, got "
                                      f"{value!r}; leave it out for the default.")


@dataclass
class RenderResult:
    """ok False: ``error`` says what went wrong (the kind of failure and the code's line, or
    which limit), in one paragraph suitable to send back to the model for repair; png is None
    and width / height are 0. ``stdout`` is what the code printed, ``seconds`` the wall time."""
    ok: bool
    png: bytes | None
    error: str
    stdout: str
    seconds: float
    width: int
    height: int
    interrupted: bool = False   # stopped by should_stop (Cancel), not by the code


# ----------------------------------------------------------------------------- one child

def _child_env(folder: str, mpl_dir: str) -> dict:
    """Only what the interpreter and matplotlib need: nothing of this process's environment
    (no proxies, tokens or API keys, not even its PATH)."""
    return {"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": mpl_dir, "HOME": folder, "TMPDIR": folder,
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _Child:
    """One renderer process, used for one figure."""

    def __init__(self, root: str, master: str):
        self.folder = tempfile.mkdtemp(prefix="run-", dir=root)
        self.master = master
        mpl_dir = sandbox_fs.seed(self.folder, master)   # its own, never another render's
        self.out, self.err, self.err_total = bytearray(), bytearray(), 0
        self.open_fds: set[int] = set()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", str(CHILD_PATH)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.folder,
                env=_child_env(self.folder, mpl_dir), start_new_session=True, close_fds=True)
        except OSError:
            _remove_tree(self.folder)
            raise
        self.open_fds = {self.proc.stdout.fileno(), self.proc.stderr.fileno()}
        self.started = time.monotonic()

    def read(self, deadline: float, until_ready: bool, out_cap: int,
             should_stop: Callable[[], bool] | None = None) -> str:
        """Read stdout / stderr until READY (until_ready), both close ('eof'), the deadline
        ('timeout'), stdout passes out_cap ('overflow') or ``should_stop()`` ('interrupted',
        asked every quarter second: ComfyUI's Cancel)."""
        with selectors.DefaultSelector() as sel:
            for fd in self.open_fds:
                sel.register(fd, selectors.EVENT_READ)
            while self.open_fds:
                if until_ready and _child.READY in self.out:
                    return "ready"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                if should_stop is not None:
                    if should_stop():
                        return "interrupted"
                    remaining = min(remaining, _STOP_POLL_SECONDS)
                for key, _ in sel.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                        self.open_fds.discard(key.fd)
                    elif key.fd == self.proc.stdout.fileno():
                        self.out += chunk
                        if len(self.out) > out_cap:
                            return "overflow"
                    else:
                        self.err = (self.err + chunk)[-_STDERR_KEEP:]
                        self.err_total += len(chunk)
                        if self.err_total > _STDERR_FLOOD:
                            return "overflow"
        return "ready" if until_ready and _child.READY in self.out else "eof"

    def send(self, request: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(request).encode("utf-8") + b"\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it died; what it left on stdout / stderr says why

    def reap(self) -> tuple[int, float]:
        """Kill what is left of the process group, then (exit code, CPU seconds used)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            _pid, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            return self.proc.returncode, usage.ru_utime + usage.ru_stime
        except ChildProcessError:  # already reaped elsewhere
            return self.proc.wait(), 0.0

    def discard(self) -> None:
        if self.proc.returncode is None:
            self.reap()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        _remove_tree(self.folder)

    def status(self) -> dict | None:
        """The last JSON line the child wrote (after READY), or None."""
        text = bytes(self.out).split(_child.READY, 1)[-1].decode("utf-8", "replace")
        for line in reversed(text.strip().splitlines()):
            try:
                status = json.loads(line)
            except (ValueError, RecursionError):   # not JSON, or nested to crash the reader
                continue
            return status if isinstance(status, dict) else None
        return None

    def read_png(self, limits: SandboxLimits) -> bytes | None:
        path = os.path.join(self.folder, _child.PNG_NAME)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if st.st_mode & 0o170000 != 0o100000 or st.st_size > limits.output_mb << 20:
                return None
            return f.read()


def _png_size(png: bytes) -> tuple[int, int] | None:
    if len(png) < 24 or not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        return None
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# ----------------------------------------------------------------------------- the pool

UNSAFE_ENV = "SCIENCE_T2I_SANDBOX_WITHOUT_KERNEL"


def kernel_gate(layers: tuple[str, ...]) -> tuple[str, ...]:
    """The layers a pool uses: the kernel's is required, and where this system cannot set
    it up, model code is refused unless the user allowed it explicitly (``UNSAFE_ENV=1``)."""
    if "kernel" not in layers:
        return layers
    from .sandbox_kernel import support
    ok, why = support()
    if ok:
        return layers
    if os.environ.get(UNSAFE_ENV) == "1":
        log.warning("figure sandbox without the kernel's layer (%s=1): %s; model-written code "
                    "runs under the Python-level guards only", UNSAFE_ENV, why)
        return tuple(layer for layer in layers if layer != "kernel")
    raise ScienceT2IError(
        f"ImgCoder runs model-written code only inside the kernel's sandbox, and {why}. Run "
        f"ComfyUI on Linux 5.13+ (Landlock and seccomp, outside a container that forbids "
        f"them), or, at your own risk, set {UNSAFE_ENV}=1 to run it under the Python-level "
        "guards alone (which model code can escape).")


def _validate(code, width, height, dpi, limits) -> None:
    if not isinstance(code, str):
        raise ScienceT2IError(f"the figure code must be a string, got {type(code).__name__}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ScienceT2IError(f"{name} must be a positive whole number of pixels, got "
                                  f"{value!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 0 < dpi <= 10_000:
        raise ScienceT2IError(f"dpi must be a positive number (e.g. 100), got {dpi!r}")
    if not isinstance(limits, SandboxLimits):
        raise ScienceT2IError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
    if os.name != "posix":
        raise ScienceT2IError("the figure sandbox needs Linux or macOS (resource limits); "
                              "render figures on such a machine")


def _shutdown(state: dict) -> None:
    """Kill and remove every child, then the pool's folder (at close() or interpreter exit)."""
    with state["lock"]:
        state["closed"] = True
        children = list(state["spares"]) + list(state["live"])
        state["spares"].clear()
    for child in children:
        child.discard()
    if state["root"]:
        _remove_tree(state["root"])


class SandboxPool:
    """Renders figures in single-use child processes, keeping ``spares`` of them started in
    the background so a render does not wait for Python and matplotlib to start.
    Thread-safe; the children are killed and their folders removed at close() or exit."""

    def __init__(self, spares: int = 1, temp_dir: str | None = None,
                 startup_timeout: float = 120.0,
                 _layers: tuple[str, ...] = ("kernel", "python")):
        """``_layers`` is for tests: they switch one layer off to show the other holds."""
        if isinstance(spares, bool) or not isinstance(spares, int) or spares < 0:
            raise ScienceT2IError(f"spares must be a whole number >= 0, got {spares!r}")
        self.spares, self.temp_dir, self.startup_timeout = spares, temp_dir, startup_timeout
        self.layers = kernel_gate(tuple(_layers))
        self._state = {"lock": threading.Lock(), "spares": [], "live": set(), "root": None,
                       "closed": False, "refilling": False}
        self._finalizer = weakref.finalize(self, _shutdown, self._state)

    # -- children
    def _root(self) -> tuple[str, str]:
        state = self._state
        with state["lock"]:
            if state["closed"]:
                raise ScienceT2IError("this SandboxPool is closed; make a new one")
            if state["root"] is None:
                root = tempfile.mkdtemp(prefix="science-t2i-sandbox-", dir=self.temp_dir)
                os.chmod(root, 0o711)  # a child running as nobody must reach its own folder
                os.mkdir(os.path.join(root, "mpl-master"), 0o700)
                state["root"] = root
            return state["root"], os.path.join(state["root"], "mpl-master")

    def _start(self) -> _Child:
        try:
            return _Child(*self._root())
        except OSError as exc:
            raise ScienceT2IError(f"could not start the figure sandbox ({sys.executable} -I "
                                  f"{CHILD_PATH.name}): {exc}; check that this Python can start "
                                  "processes and that the temporary folder is writable") from exc

    def _refill(self) -> None:
        state = self._state
        try:
            while True:
                with state["lock"]:
                    if state["closed"] or len(state["spares"]) >= self.spares:
                        return
                try:
                    child = self._start()
                except (OSError, ScienceT2IError):
                    return  # the next render starts its own and reports the problem
                with state["lock"]:
                    if not state["closed"]:
                        state["spares"].append(child)
                        continue
                child.discard()
                return
        finally:
            with state["lock"]:
                state["refilling"] = False

    def _refill_in_background(self) -> None:
        state = self._state
        with state["lock"]:
            if state["refilling"] or state["closed"] or len(state["spares"]) >= self.spares:
                return
            state["refilling"] = True
        threading.Thread(target=self._refill, name="figure-sandbox-spare", daemon=True).start()

    def _take(self) -> _Child:
        state = self._state
        with state["lock"]:
            child = state["spares"].pop(0) if state["spares"] else None
        if child is None or child.proc.poll() is not None:
            if child is not None:
                child.discard()
            child = self._start()
        with state["lock"]:
            state["live"].add(child)
        return child

    def prestart(self) -> None:
        """Start the spare children now (in the background), e.g. when a graph loads."""
        self._root()
        self._refill_in_background()

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Wait until the spares are started and warmed up (benchmarks, tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._state["lock"]:
                spares = list(self._state["spares"])
                refilling = self._state["refilling"]
            if len(spares) >= self.spares and not refilling and \
                    all(c.read(deadline, True, 1 << 20) == "ready" for c in spares):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> SandboxPool:  # noqa: PYI034 -- no Self on Python 3.10
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- rendering
    def render(self, code: str, *, width: int = 1024, height: int = 768, dpi: int = 100,
               limits: SandboxLimits = SandboxLimits(),
               should_stop: Callable[[], bool] | None = None,
               _check: bool = True) -> RenderResult:
        """Run ``code`` in a child and return its figure as PNG bytes of exactly width x height.
        ``should_stop`` (e.g. ComfyUI's Cancel) is asked while waiting: when it says so the
        child is killed at once and the result has ``interrupted`` set.
        ``_check=False`` skips check_code (tests use it to show the run-time guards hold)."""
        _validate(code, width, height, dpi, limits)
        start = time.perf_counter()

        def failed(error: str, stdout: str = "") -> RenderResult:
            return RenderResult(False, None, error, stdout, time.perf_counter() - start, 0, 0)

        if _check:
            problems = check_code(code)
            if problems:
                return failed("The code was refused before running: " + "; ".join(problems)
                              + ". Figure code may only compute and draw with matplotlib (no "
                              "eval/exec, introspection, operating system or files outside "
                              "its folder).")
        if width * height > limits.max_pixels:
            return failed(f"The requested size {width} x {height} px is more than the limit of "
                          f"{limits.max_pixels:,} px; ask for a smaller figure.")
        child = self._take()
        try:
            return self._render_in(child, code, width, height, dpi, limits, start, failed,
                                   should_stop)
        finally:
            with self._state["lock"]:
                self._state["live"].discard(child)
            child.discard()
            # the next spare starts after this render: on a small machine its warm-up would
            # otherwise take CPU from the render being waited for
            self._refill_in_background()

    def _render_in(self, child, code, width, height, dpi, limits, start, failed, should_stop):
        ready = child.read(time.monotonic() + self.startup_timeout, True, 1 << 20, should_stop)
        if ready == "interrupted":
            child.reap()
            return _interrupted(failed)
        if ready != "ready":
            child.reap()
            status = child.status() or {}
            why = status.get("error") or bytes(child.err).decode("utf-8", "replace").strip()
            hint = ("install matplotlib into this Python (pip install matplotlib)"
                    if "matplotlib" in why and "No module" in why else
                    "check that numpy and matplotlib import in this Python")
            why = why[-500:] or "it printed nothing"
            raise ScienceT2IError(f"The figure sandbox could not start ({why}); {hint}.")
        sandbox_fs.keep_font_list(child.folder, child.master)   # no code has run in it yet
        child.send({"code": code, "width": width, "height": height, "dpi": dpi,
                    "layers": list(self.layers),
                    "limits": {k: getattr(limits, k) for k in SandboxLimits.__dataclass_fields__}})
        cap = limits.stdout_kb * 1024 * 6 + (256 << 10)  # JSON escapes at most 6x
        state = child.read(time.monotonic() + limits.wall_seconds + _GRACE_SECONDS, False, cap,
                           should_stop)
        exit_code, cpu = child.reap()
        if state == "interrupted":
            return _interrupted(failed)
        status = child.status() if state == "eof" else None
        if status is None:
            return failed(_explain_exit(child, state, exit_code, cpu, limits, code))
        stdout = str(status.get("stdout", ""))[: limits.stdout_kb * 1024]
        if not status.get("ok"):
            return failed(str(status.get("error") or "The renderer failed."), stdout)
        png = child.read_png(limits)
        if png is None or _png_size(png) != (width, height):
            return failed(f"The renderer produced no valid {width} x {height} PNG (the code may "
                          "have overwritten its output); do not write files named "
                          f"{_child.PNG_NAME!r}.", stdout)
        return RenderResult(True, png, "", stdout, time.perf_counter() - start, width, height)


def _interrupted(failed: Callable[..., RenderResult]) -> RenderResult:
    result = failed("The render was cancelled.")
    result.interrupted = True
    return result


_default_pool: SandboxPool | None = None
_default_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """The process-wide pool render_figure uses (created on first use, closed at exit)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = SandboxPool()
        return _default_pool


def render_figure(code: str, *, width: int = 1024, height: int = 768, dpi: int = 100,
                  limits: SandboxLimits = SandboxLimits(), pool: SandboxPool | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  _check: bool = True) -> RenderResult:
    """Render model-written matplotlib ``code`` to a width x height PNG in the sandbox.
    Never raises for bad code (ok=False with a message); raises ScienceT2IError for bad
    arguments or when the sandbox itself cannot start."""
    return (pool or default_pool()).render(code, width=width, height=height, dpi=dpi,
                                           limits=limits, should_stop=should_stop,
                                           _check=_check)
