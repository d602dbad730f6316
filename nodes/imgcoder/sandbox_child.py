"""The sandboxed figure renderer: a process of its own that runs one model-written matplotlib
program and saves its figure as PNG.

``sandbox.py`` starts it by file path as ``python -I <this file>`` (inside ComfyUI the pack's
package name is whatever its folder is called, so ``-m`` is not reliable); it therefore imports
nothing from the pack: stdlib, numpy and matplotlib only. Protocol:

1. import numpy + matplotlib (Agg) and draw a warm-up figure, so lazy imports, fonts and
   caches are loaded before any guard is up; write ``READY`` on stdout;
2. read one JSON request line from stdin: code, width, height, dpi, limits;
3. lock down: resource limits, root drops to ``nobody``, the environment is emptied,
   process-starting functions are replaced, an audit hook refuses files outside the working
   folder (the current folder, a fresh temporary one), processes, sockets, ctypes and
   imports outside the allow-list; the code gets restricted builtins;
4. run the code, size the figure to exactly width x height px, write ``figure.png`` in the
   working folder and one JSON status line on stdout; exit.

Module level imports only the standard library, so ``sandbox.py`` can read the constants
below without loading matplotlib into the ComfyUI process.
"""
from __future__ import annotations

import builtins
import io
import json
import os
import sys

# Top-level modules figure code may import.
# (``from __future__ import ...`` is a compiler directive and always allowed besides.)
ALLOWED_IMPORTS = frozenset({
    "matplotlib", "mpl_toolkits", "numpy", "math", "cmath", "fractions", "decimal",
    "itertools", "functools", "collections", "dataclasses", "typing", "string", "re",
    "random", "statistics", "colorsys", "textwrap", "enum", "copy", "operator", "heapq",
    "bisect", "datetime",
})
# What matplotlib / numpy may still import lazily while drawing (never the code itself).
LIBRARY_IMPORTS = frozenset({
    "PIL", "kiwisolver", "dateutil", "pyparsing", "cycler", "packaging", "contourpy",
    "fontTools", "six", "encodings", "unicodedata", "zlib", "_decimal", "_pydecimal",
    "_strptime", "calendar", "locale", "weakref", "_weakrefset", "numbers", "struct",
    "_struct", "base64", "binascii", "hashlib", "_hashlib", "_sha512", "_blake2", "uuid",
    "gzip", "bz2", "lzma", "_compression", "shlex", "contextlib", "abc", "warnings",
    "traceback", "linecache", "tokenize", "token", "inspect", "ast", "dis", "opcode",
    "types", "array", "zipfile", "zipimport", "importlib", "pathlib", "fnmatch",
    "posixpath", "genericpath", "stat", "errno", "io", "codecs", "json", "pprint",
    "reprlib", "keyword", "_collections_abc", "_heapq", "_bisect", "_random", "_operator",
    "_functools", "_json", "_pickle", "pickle", "copyreg", "logging", "platform",
    "zoneinfo", "tzdata", "xml",
})
CODE_FILENAME = "<figure code>"
PNG_NAME = "figure.png"
READY = b"READY\n"
NOBODY = 65534
MAX_FILES = 16  # files (and folders) the code may create or write; each at most output_mb

# Modules the warm-up loads so that code using them pays nothing and needs no file reads later.
_PRELOAD = (
    "matplotlib.pyplot", "matplotlib.patches", "matplotlib.lines", "matplotlib.collections",
    "matplotlib.path", "matplotlib.transforms", "matplotlib.ticker", "matplotlib.colors",
    "matplotlib.cm", "matplotlib.gridspec", "matplotlib.patheffects", "matplotlib.text",
    "matplotlib.table", "matplotlib.dates", "matplotlib.tri", "matplotlib.markers",
    "matplotlib.font_manager", "matplotlib.legend", "matplotlib.image", "matplotlib.contour",
    "matplotlib.sankey", "matplotlib.spines", "matplotlib.projections.polar",
    "matplotlib.backends.backend_agg", "mpl_toolkits.mplot3d", "mpl_toolkits.mplot3d.art3d",
    "mpl_toolkits.axes_grid1", "numpy.linalg", "numpy.fft", "numpy.random",
    "numpy.polynomial", "numpy.ma",
    *sorted(ALLOWED_IMPORTS - {"matplotlib", "mpl_toolkits", "numpy"}),
)

# Functions that start processes or threads or re-arm signals: replaced in every module after
# the warm-up (an alias such as subprocess._fork_exec is found by identity). Most also raise
# audit events; _posixsubprocess.fork_exec and thread starts do not.
_SCRUB = {
    "os": ("system", "popen", "fork", "forkpty", "execv", "execve", "posix_spawn",
           "posix_spawnp", "kill", "killpg", "spawnv", "spawnve", "setsid", "setuid",
           "setgid", "setgroups"),
    "_posixsubprocess": ("fork_exec",),
    "_thread": ("start_new_thread", "start_new", "interrupt_main"),
    "signal": ("signal", "setitimer", "alarm", "pthread_kill", "pthread_sigmask",
               "siginterrupt", "set_wakeup_fd"),
}
# Audit events refused whoever raises them once the guards are up.
_BLOCKED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill",
    "resource.setrlimit", "resource.prlimit", "os.symlink", "os.link", "os.chown",
    "os.chroot", "os.chdir", "os.setxattr", "os.removexattr", "os.add_dll_directory",
    "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "sqlite3.connect", "sqlite3.connect/handle", "dbm.open", "fcntl.ioctl", "syslog.openlog",
    "syslog.syslog", "webbrowser.open", "urllib.Request", "ftplib.connect",
    "http.client.connect", "smtplib.connect", "imaplib.open", "nntplib.connect",
    "poplib.connect", "telnetlib.Telnet.open", "mmap.__new__", "os.startfile", "os.mkfifo",
    "os.mknod",
})
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "_winapi.", "winreg.", "msvcrt.")
# Events refused only when raised directly by the figure code (matplotlib, dataclasses and the
# traceback module use them legitimately).
_USER_GATED_EVENTS = frozenset({
    "object.__getattr__", "object.__setattr__", "object.__delattr__", "sys._getframe",
    "exec", "compile", "code.__new__", "function.__new__", "sys.settrace", "sys.setprofile",
})
# Events allowed on paths in the working folder: event -> (path arguments, dir_fd arguments).
_FOLDER_EVENTS = {
    "os.mkdir": ((0,), (2,)), "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)), "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)),
    "os.chmod": ((0,), (2,)), "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SandboxViolation(PermissionError):
    """Something the sandbox refuses: a file outside the folder, a process, an import ...
    Each one is also remembered (with the code's line), so a refusal that the code catches
    and ignores still fails the render."""

    def __init__(self, message: str):
        super().__init__(message)
        if not (_REFUSALS and _REFUSALS[-1][0] == message):
            _REFUSALS.append((message, _code_line()))


_REFUSALS: list = []  # (message, line) of every SandboxViolation, see above


class _Refused(SandboxViolation):
    """Raised by the audit hook, which records the refusal itself, and only when the code
    asked directly: a library probing a file and handling the error fails nothing."""

    def __init__(self, message: str):
        PermissionError.__init__(self, message)


class _ImportRefused(ModuleNotFoundError):
    """An import outside the allow-list: to the code and to libraries probing optional
    modules (``try: import x except ImportError``) the module simply is not there."""


def _code_line() -> int:
    """The line of the figure code being run (0 outside it)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == CODE_FILENAME:
            return frame.f_lineno
        frame = frame.f_back
    return 0


class _Stop(BaseException):
    """A limit was hit (BaseException, so ``except Exception`` in the code cannot swallow it)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


# ----------------------------------------------------------------------------- audit hook

def _audit_hook_factory(folder, package_roots, stdlib_roots, site_dirs, font_files,
                        import_tops, blocked, prefixes, gated, folder_events, write_flags,
                        code_filename, own_filename, max_files, lstat, readlink, getcwd,
                        getframe, get_ident, violations, refused, import_refused):
    """Build the audit hook. This function is re-created with private globals (see
    _make_audit_hook) and everything it uses is an argument, so figure code that reaches this
    module's globals or patches os / posixpath cannot change how the hook decides."""
    busy, written = [0], [0]

    def stat(path):
        # inside the folder, by the path relative to it: a process that dropped to nobody may
        # not traverse the folders above its own (pytest's are 0700), but its cwd is the folder
        # and chdir is refused, so relative lookups always start there
        if path == folder:
            return lstat(".")
        if path.startswith(folder + "/"):
            return lstat(path[len(folder) + 1:])
        return lstat(path)

    def resolve(path):
        # realpath from C functions captured at start-up (posixpath's can be monkeypatched)
        if type(path) is bytes:
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts, out, hops = [p for p in path.split("/") if p and p != "."], [], 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                if out:
                    out.pop()
                continue
            here = "/" + "/".join(out + [name])
            try:
                mode = stat(here).st_mode
            except OSError:
                out.append(name)
                continue
            if mode & 0o170000 == 0o120000:
                hops += 1
                if hops > 40:
                    return None
                target = readlink(here[len(folder) + 1:] if here.startswith(folder + "/")
                                  else here)
                if target.startswith("/"):
                    out = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
            else:
                out.append(name)
        return "/" + "/".join(out)

    def inside(path, root):
        return path == root or path.startswith(root + "/")

    def readable(path):
        # the working folder, the fonts, the loaded packages' folders, the stdlib without
        # whatever site-packages lies under it
        if inside(path, folder) or path in font_files:
            return True
        if any(inside(path, r) for r in package_roots):
            return True
        return any(inside(path, r) for r in stdlib_roots) and \
            not any(inside(path, s) for s in site_dirs)

    def is_dir(path):
        try:
            return stat(path).st_mode & 0o170000 == 0o040000
        except OSError:
            return False

    def check_open(args):
        path, mode, flags = args
        writing = (type(mode) is str and any(c in mode for c in "wax+")) or \
            (type(flags) is int and flags & write_flags)
        if type(path) is int:
            return "writing to an inherited file descriptor" if writing else None
        if type(path) not in (str, bytes):
            return "opening a file by an object that is not a path"
        real = resolve(path)
        if real is None:
            return f"opening {path!r} (too many symbolic links)"
        if is_dir(real):  # no directory fds: os.open(..., dir_fd=) is resolved from them
            return f"opening the folder {real!r}"
        if inside(real, folder):
            if writing:
                # RLIMIT_FSIZE caps each file; this caps their number, so the disk is safe
                written[0] += 1
                if written[0] > max_files:
                    return f"writing more than {max_files} files"
            return None
        if writing:
            return (f"writing {real!r}: the code may only write in its own working folder "
                    "(and need not: the renderer saves the figure itself)")
        if not readable(real):
            return f"reading {real!r}: the code may only read files in its own working folder"
        return None

    def check_paths(event, args):
        paths, dir_fds = folder_events[event]
        for i in dir_fds:
            if i < len(args) and args[i] not in (None, -1):
                return f"{event} relative to a file descriptor"
        for i in paths:
            a = args[i] if i < len(args) else None
            if type(a) in (str, bytes):
                real = resolve(a)
                if real is None or not inside(real, folder):
                    return f"{event} on {a!r}, outside the working folder"
            elif not (type(a) is int and event == "os.truncate"):  # ftruncate: a file it wrote
                return f"{event} on a file descriptor"
        return None

    def check_listing(event, args):
        path = args[0] if args and args[0] is not None else "."
        if type(path) is int:
            return f"{event} on a file descriptor"
        real = resolve(path) if type(path) in (str, bytes) else None
        if real is None or not readable(real):
            return f"listing {path!r}: the code may only list its own working folder"
        return None

    def untrusted(frame):
        # the figure code, or code it compiled itself ("<string>"); not frozen importlib
        name = frame.f_code.co_filename if frame is not None else ""
        return name == code_filename or (name.startswith("<") and not name.startswith("<frozen"))

    def origin(frame):
        # who asked: the nearest frame that is neither the import system nor our own guards
        while frame is not None and (frame.f_code.co_filename == own_filename
                                     or frame.f_code.co_filename.startswith("<frozen importlib")):
            frame = frame.f_back
        return frame

    def decide(event, args, caller):
        if event in blocked or event.startswith(prefixes):
            return f"{event}: figure code may not start processes, open connections, send " \
                   "signals or change limits"
        if event == "open":
            return check_open(args)
        if event in folder_events:
            problem = check_paths(event, args)
            if problem is None and event == "os.mkdir":
                written[0] += 1
                if written[0] > max_files:
                    return f"creating more than {max_files} files and folders"
            return problem
        if event in ("os.listdir", "os.scandir", "glob.glob"):
            return check_listing(event, args)
        if event == "import":
            return None if args[0].partition(".")[0] in import_tops else "import"
        if event in gated and untrusted(caller):
            if event in ("object.__getattr__", "object.__setattr__", "object.__delattr__"):
                return f"access to the attribute {args[1]!r} (introspection)"
            return f"{event} (dynamic code or introspection)"
        return None

    def user_line(frame):
        for _ in range(500):
            if frame is None:
                return 0
            if frame.f_code.co_filename == code_filename:
                return frame.f_lineno
            frame = frame.f_back
        return 0

    def hook(event, args):
        me = get_ident()
        if busy[0] == me:  # our own getframe / f_code reads below raise events too
            return
        busy[0] = me
        try:
            caller = getframe(1)
            try:
                problem = decide(event, args, caller)
            except Exception:  # noqa: BLE001 -- arguments it cannot read: refuse (fail closed)
                problem = f"{event} (its arguments could not be checked)"
            direct = bool(problem) and untrusted(origin(caller))
            line = user_line(caller) if problem else 0
            caller = None
        finally:
            busy[0] = 0
        # raised after `busy` is cleared: a patched exception class is checked too
        if problem == "import":
            raise import_refused(f"the sandbox refused importing {args[0]!r} (figure code may "
                                 "import only the allowed modules)", name=args[0])
        if problem:
            message = f"the sandbox refused {problem}"
            if direct:
                violations.append((message, line))
            raise refused(message)

    return hook


def _make_audit_hook(**kwargs):
    """The hook built by a copy of _audit_hook_factory whose globals are a private dict (with a
    private copy of the builtins), unreachable from the figure code."""
    import types
    private = {"__builtins__": dict(vars(builtins))}
    factory = types.FunctionType(_audit_hook_factory.__code__, private, "_audit_hook_factory")
    return factory(**kwargs)


# ----------------------------------------------------------------------------- what the code sees

class _ModuleView(type(sys)):
    """What an import gives the code: attribute access refuses modules outside the allow-list,
    so ``matplotlib.os`` or ``numpy.sys`` do not hand out os / sys."""

    def __init__(self, module, views):
        super().__init__(module.__name__, module.__doc__)
        object.__setattr__(self, "_m", (module, views))

    def __getattr__(self, name):
        module, views = object.__getattribute__(self, "_m")
        if name == "__all__" and not hasattr(module, "__all__"):
            return [n for n in vars(module) if not n.startswith("_")
                    and not isinstance(getattr(module, n), type(sys))]
        return _view(getattr(module, name), views, f"{module.__name__}.{name}")

    def __setattr__(self, name, value):
        setattr(object.__getattribute__(self, "_m")[0], name, value)

    def __dir__(self):
        return dir(object.__getattribute__(self, "_m")[0])


def _view(value, views, label):
    if not isinstance(value, type(sys)) or isinstance(value, _ModuleView):
        return value
    if value.__name__.partition(".")[0] not in ALLOWED_IMPORTS | {"__future__"}:
        raise SandboxViolation(f"the sandbox refused {label} (the module {value.__name__!r} "
                               "is not available to figure code)")
    if value.__name__ not in views:
        views[value.__name__] = _ModuleView(value, views)
    return views[value.__name__]


def _forbidden(name: str, why: str):
    def refuse(*args, **kwargs):
        raise SandboxViolation(f"the sandbox refused {name}(): {why}")
    refuse.__name__ = name
    return refuse


def _user_builtins(stdout: _BoundedText, stderr: _BoundedText) -> dict:
    """Builtins for the code: imports checked against the allow-list, open() read-only,
    print() into a bounded buffer, no eval/exec/compile/globals/input/breakpoint/exit."""
    real_import, real_open, real_getattr = builtins.__import__, builtins.open, builtins.getattr
    views: dict = {}

    def __import__(name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            raise _ImportRefused("the sandbox refused a relative import")
        top = name.partition(".")[0]
        if top not in ALLOWED_IMPORTS and name != "__future__":
            raise _ImportRefused(f"the sandbox refused importing {name!r}: figure code may "
                                 f"import only {', '.join(sorted(ALLOWED_IMPORTS))}", name=name)
        module = real_import(name, globals, locals, fromlist, level)
        for item in fromlist or ():
            if item != "*" and hasattr(module, item):
                _view(real_getattr(module, item), views, f"{module.__name__}.{item}")
        return _view(module, views, name)

    def open(file, mode="r", *args, **kwargs):
        if any(c in str(mode) for c in "wax+"):
            raise SandboxViolation("the sandbox refused open() for writing: the renderer "
                                   "saves the figure itself")
        return real_open(file, mode, *args, **kwargs)

    def checked_name(name):
        if not isinstance(name, str) or (name.startswith("__") and name.endswith("__")) \
                or name in _FORBIDDEN_ATTRS:
            raise SandboxViolation(f"the sandbox refused the attribute {name!r} "
                                   "(introspection)")
        return name

    def getattr(obj, name, *default):
        return _view(real_getattr(obj, checked_name(name), *default), views, str(name))

    def hasattr(obj, name):
        return builtins.hasattr(obj, checked_name(name))

    def setattr(obj, name, value):
        return builtins.setattr(obj, checked_name(name), value)

    def delattr(obj, name):
        return builtins.delattr(obj, checked_name(name))

    def print(*args, sep=" ", end="\n", file=None, flush=False):
        out = stderr if file is not None and file is sys.stderr else stdout
        out.write((sep if sep is not None else " ").join(map(str, args))
                  + (end if end is not None else "\n"))

    names = dict(vars(builtins))
    for name in ("eval", "exec", "compile", "globals", "locals", "vars", "breakpoint", "input",
                 "exit", "quit", "help", "__loader__", "__spec__", "copyright",
                 "credits", "license"):
        names.pop(name, None)
    names.update(__import__=__import__, open=open, getattr=getattr, hasattr=hasattr,
                 setattr=setattr, delattr=delattr, print=print)
    for name in ("eval", "exec", "compile", "globals", "locals", "vars", "breakpoint"):
        names[name] = _forbidden(name, "figure code may not run dynamic code or inspect "
                                       "namespaces")
    names["input"] = _forbidden("input", "figure code gets no input")
    for name in ("exit", "quit"):
        names[name] = _forbidden(name, "figure code must not end the renderer")
    return names


_FORBIDDEN_ATTRS = frozenset({
    "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "tb_frame", "tb_next",
    "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code", "co_code",
    "func_globals",
})


class _BoundedText(io.TextIOBase):
    """print() target that stops the run past ``limit`` bytes (strict) or drops the rest."""

    def __init__(self, limit: int, strict: bool):
        self.parts, self.size, self.limit, self.strict = [], 0, limit, strict

    def writable(self):
        return True

    def write(self, text):
        text = str(text)
        size = len(text.encode("utf-8", "replace"))
        if self.size + size > self.limit:
            room = self.limit - self.size
            if room > 0:
                self.parts.append(text.encode("utf-8", "replace")[:room].decode("utf-8",
                                                                                "ignore"))
            self.size = self.limit
            if self.strict:
                raise _Stop("output", f"the code printed more than {self.limit // 1024} KB")
            return len(text)
        self.parts.append(text)
        self.size += size
        return len(text)

    def getvalue(self) -> str:
        return "".join(self.parts)


# ----------------------------------------------------------------------------- start-up

def _warm_up():
    """Import and draw once, so lazy imports, font loading and caches happen now."""
    import codecs
    import datetime
    import importlib

    for encoding in ("latin-1", "cp1252", "ascii", "utf-16", "utf-32", "cp437"):
        codecs.lookup(encoding)  # codec modules load lazily, and may not be readable later
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np
    for name in _PRELOAD:
        importlib.import_module(name)
    from matplotlib.patches import Arc, Circle, FancyArrowPatch, Polygon, Rectangle, Wedge
    fig = plt.figure(figsize=(6, 4), dpi=50)
    ax = fig.add_subplot(2, 3, 1)
    x = np.linspace(0, 1, 20)
    ax.plot(x, x ** 2, "o-", label=r"$\alpha^2 \cdot \sqrt{x}$")
    ax.fill_between(x, x, alpha=0.3)
    ax.annotate("a", (0.5, 0.5), xytext=(0.1, 0.8), arrowprops={"arrowstyle": "->"})
    ax.legend()
    ax.set_xlabel("x (m)")
    ax.set_title("Title")
    for patch in (Circle((0.5, 0.5), 0.1), Rectangle((0, 0), 0.2, 0.1), Wedge((0, 0), 1, 0, 45),
                  Polygon([[0, 0], [1, 0], [0, 1]]), Arc((0, 0), 1, 1, theta2=90),
                  FancyArrowPatch((0, 0), (1, 1), arrowstyle="-|>", mutation_scale=10)):
        ax.add_patch(patch)
    ax = fig.add_subplot(2, 3, 2)
    ax.bar(["a", "b"], [1, 2], yerr=[0.1, 0.2])
    ax.twiny().plot([datetime.date(2020, 1, 1), datetime.date(2020, 3, 1)], [1, 2])  # tz data
    ax.hist(np.arange(10), bins=3)
    ax = fig.add_subplot(2, 3, 3)
    grid = np.mgrid[0:1:5j, 0:1:5j]
    im = ax.imshow(grid[0], cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.contourf(grid[0] * grid[1])
    ax.quiver(grid[0], grid[1], grid[1], -grid[0])
    ax.streamplot(np.linspace(0, 1, 5), np.linspace(0, 1, 5), grid[1], -grid[0],
                  start_points=[[0.5, 0.5]])  # one line: the code path, not the cost
    fig.add_subplot(2, 3, 4, projection="polar").plot(x, x)
    ax = fig.add_subplot(2, 3, 5, projection="3d")
    ax.plot_surface(grid[0], grid[1], grid[0] * grid[1])
    ax.text(0, 0, 0, "z")
    ax = fig.add_subplot(2, 3, 6)
    ax.pie([1, 2, 3], labels=["a", "b", "c"], autopct="%1.0f%%")
    ax.text(0, 0, "bold", fontweight="bold", style="italic", family="serif")
    ax.text(0, 0, "mono", family="monospace")
    fig.suptitle("warm-up")
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png", metadata={"Software": None})
    plt.close("all")
    return matplotlib, plt, np


def _scrub_targets() -> list:
    """(module dict, key, stub) for every reference to a _SCRUB function in a loaded module."""
    originals = {}
    for module_name, names in _SCRUB.items():
        module = sys.modules.get(module_name)
        for name in names:
            func = getattr(module, name, None) if module else None
            if func is not None:
                originals[id(func)] = _forbidden(
                    f"{module_name}.{name}", "figure code may not start processes or threads "
                                             "or handle signals")
    targets = []
    for module in list(sys.modules.values()):
        d = getattr(module, "__dict__", None)
        if isinstance(d, dict) and not isinstance(module, _ModuleView):
            targets += [(d, k, originals[id(v)]) for k, v in list(d.items()) if id(v) in originals]
    return targets


def _read_roots() -> dict:
    """Where the code's libraries may read: the folders of the installed packages already
    loaded (matplotlib's data, numpy, PIL ...), the stdlib without the site-packages under it,
    and matplotlib's font files; never the rest of site-packages or the pack itself."""
    import site
    import sysconfig

    from matplotlib import font_manager
    real, paths = os.path.realpath, sysconfig.get_paths()
    site_dirs = {real(p) for p in site.getsitepackages() + [paths["purelib"], paths["platlib"]]}
    site_dirs |= {real(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    packages = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str):
            continue
        file = real(file)
        for s in site_dirs:
            if file.startswith(s + "/"):
                top = file[len(s) + 1:].split("/")[0]
                if "." not in top:  # packages only (not .pth-loaded helpers such as finders)
                    packages |= {s + "/" + top, s + "/" + top + ".libs"}  # + bundled .so files
    fonts = font_manager.fontManager.ttflist + font_manager.fontManager.afmlist
    return {"package_roots": tuple(sorted(packages)),
            "stdlib_roots": tuple(sorted({real(paths["stdlib"]), real(paths["platstdlib"])})),
            "site_dirs": tuple(sorted(site_dirs)),
            "font_files": frozenset(real(f.fname) for f in fonts)}


# ----------------------------------------------------------------------------- lock-down

def _others_can_read(roots: dict) -> bool:
    """Whether a process without root's rights (``nobody``) can still reach what the code's
    libraries read lazily: every folder on the way to the package and stdlib roots must be
    searchable by others, and the font files readable. A Python installed under /root (mode
    0700), or a checkout under a private mktemp folder, fails this: dropping to nobody there
    would break matplotlib's own font lookups, so such a child keeps root's uid and relies on
    the other guards."""
    import stat as st
    seen: set = set()

    def reachable(path: str, want: int) -> bool:
        parts = path.rstrip("/").split("/")
        for i in range(2, len(parts) + 1):
            here = "/".join(parts[:i]) or "/"
            last = i == len(parts)
            if here in seen and not last:
                continue
            try:
                mode = os.stat(here).st_mode
            except OSError:
                return True  # a root that does not exist needs no access
            need = want if last else st.S_IXOTH
            if st.S_ISDIR(mode) and last:
                need = st.S_IXOTH | st.S_IROTH
            if mode & need != need:
                return False
            seen.add(here)
        return True

    folders = list(roots["package_roots"]) + list(roots["stdlib_roots"])
    return all(reachable(p, st.S_IXOTH) for p in folders) and \
        all(reachable(f, st.S_IROTH) for f in roots["font_files"])


def _apply_limits(limits: dict, folder: str, drop_root: bool = True) -> None:
    import resource
    mb = 1 << 20

    def cap(which, soft, hard=None):
        hard = soft if hard is None else hard
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))

    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_FSIZE, int(limits["output_mb"] * mb))
    try:  # address space: enforced on Linux, not settable everywhere (macOS)
        cap(resource.RLIMIT_AS, _vm_bytes() + int(limits["memory_mb"] * mb))
    except (ValueError, OSError):
        pass
    used = resource.getrusage(resource.RUSAGE_SELF)
    # a backstop 1-2 s past the exact ITIMER_PROF limit: SIGXCPU at soft, SIGKILL at hard
    soft = int(used.ru_utime + used.ru_stime + limits["cpu_seconds"]) + 2
    cap(resource.RLIMIT_CPU, soft, soft + 1)
    if os.geteuid() == 0 and drop_root:
        # root ignores RLIMIT_NPROC and file permissions: become nobody for the code's run
        # (best effort: a container may deny it; the audit hook and scrubbing still apply)
        try:
            os.chown(folder, NOBODY, NOBODY)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError:
            pass
    try:
        cap(resource.RLIMIT_NPROC, 0)  # no fork, no threads (not enforced for root)
    except (ValueError, OSError):
        pass


def _load_kernel():
    """sandbox_kernel.py beside this file (loaded by path: this process imports nothing
    from the pack by name)."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.realpath(__file__)), "sandbox_kernel.py")
    spec = importlib.util.spec_from_file_location("_science_t2i_sandbox_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lock_kernel(kernel, roots: dict, folder: str) -> None:
    """The kernel's layer (sandbox_kernel.lock): reads below the libraries and fonts only,
    writes below the render's folder only, no sockets, processes or signals outside."""
    read = list(roots["package_roots"]) + list(roots["stdlib_roots"]) + \
        sorted(roots["font_files"])
    kernel.lock(read, [folder])


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 1 << 30


# ----------------------------------------------------------------------------- messages

def _where(exc: BaseException, lines: list[str], fallback: int = 0) -> str:
    """' at line N: `source`' for the deepest frame of the figure code in the traceback."""
    import traceback
    line = fallback
    if exc is not None and exc.__traceback__ is not None:
        # lookup_lines=False: reading library sources would be refused by the audit hook
        frames = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__),
                                                lookup_lines=False)
        for frame in frames:
            if frame.filename == CODE_FILENAME:
                line = frame.lineno or line
    if not line or line > len(lines):
        return ""
    source = lines[line - 1].strip()
    if len(source) > 160:
        source = source[:157] + "..."
    return f" at line {line}: `{source}`"


def _describe(exc: BaseException | None, lines: list[str], limits: dict, violations: list,
              wrote_too_much: bool = False) -> tuple:
    """(kind, one-paragraph message) for what stopped the run."""
    where = _where(exc, lines, violations[0][1] if violations else 0)
    if wrote_too_much or (isinstance(exc, OSError) and exc.errno == 27):  # EFBIG: RLIMIT_FSIZE
        return "output", (f"Output limit exceeded: the code wrote more than "
                          f"{limits['output_mb']} MB of files{where}. Figure code should not "
                          "write files; the renderer saves the figure itself.")
    if isinstance(exc, _Stop):
        advice = {
            "cpu": f"CPU time limit ({limits['cpu_seconds']:g} s) exceeded{where}: the code "
                   "computes too much (an endless loop, or far too many points); make it "
                   "cheaper.",
            "wall": f"Wall-clock time limit ({limits['wall_seconds']:g} s) exceeded{where}: the "
                    "code ran too long (an endless loop?); make it finish quickly.",
            "output": f"Output limit exceeded: {exc.message}{where}; print less (the figure "
                      "is what counts).",
        }
        return exc.kind, advice.get(exc.kind, exc.message.replace("{where}", where))
    if isinstance(exc, MemoryError):
        return "memory", (f"Memory limit ({limits['memory_mb']} MB) exceeded{where}: the code "
                          "allocates too much (a huge array?); use smaller arrays.")
    if isinstance(exc, (SandboxViolation, _ImportRefused)) or violations:
        what = str(exc) if isinstance(exc, (SandboxViolation, _ImportRefused)) else \
            violations[0][0]
        return "blocked", (f"Blocked: {what}{where}. Figure code may only compute and draw "
                           "with matplotlib (no files outside its folder, processes, network, "
                           "introspection or other modules).")
    if isinstance(exc, SystemExit):
        return "exit", (f"The code tried to exit (sys.exit / exit() / SystemExit){where}; figure "
                        "code must not end the program: remove that line.")
    message = str(exc).strip().replace("\n", " ")
    if len(message) > 400:
        message = message[:397] + "..."
    return "exception", f"The code raised {type(exc).__name__}: {message}{where}."


# ----------------------------------------------------------------------------- the run

def _take_figure(matplotlib, plt, created: list, max_pixels: int):
    """The current figure, else the last one the code created (even if closed)."""
    figure = plt.gcf() if plt.get_fignums() else (created[-1] if created else None)
    if figure is None:
        raise _Stop("nofigure", "The code created no figure; create one with plt.figure() or "
                                "plt.subplots() and draw on it.")
    w, h = (figure.get_size_inches() * figure.dpi).tolist()
    if w * h > max_pixels:
        raise _Stop("pixels", f"The code made a figure of {w:.0f} x {h:.0f} px{{where}}, more "
                              f"than the limit of {max_pixels:,} px; use a normal figsize (e.g. "
                              "(8, 6)): the renderer sets the final size itself.")
    return figure


def _install_drawing_guards(matplotlib, plt, max_pixels: int, created: list) -> None:
    """Size check before any Agg canvas is allocated; Agg only; remember every figure; the
    code's own savefig to a file does nothing."""
    from matplotlib import figure as mfigure
    from matplotlib.backends import backend_agg

    class CheckedRenderer(backend_agg.RendererAgg):
        def __init__(self, width, height, dpi):
            if width * height > max_pixels:
                raise _Stop("pixels", f"The code asked matplotlib to draw a {width:.0f} x "
                                      f"{height:.0f} px canvas{{where}}, more than the limit of "
                                      f"{max_pixels:,} px; use a normal figsize and dpi.")
            super().__init__(width, height, dpi)

    backend_agg.RendererAgg = CheckedRenderer
    init = mfigure.Figure.__init__

    def remembering_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        created.append(self)

    mfigure.Figure.__init__ = remembering_init
    savefig = mfigure.Figure.savefig

    def savefig_to_memory_only(self, fname, *args, **kwargs):
        # saving to a file is wasted work here (the renderer saves the figure and discards
        # the folder); to a file object (BytesIO) it may be read back, so that still works
        if isinstance(fname, (str, bytes, os.PathLike)):
            return None
        return savefig(self, fname, *args, **kwargs)

    mfigure.Figure.savefig = savefig_to_memory_only
    use, switch = matplotlib.use, plt.switch_backend

    def only_agg(real):
        def guarded(backend, *args, **kwargs):
            if str(backend).lower() not in ("agg", "module://matplotlib.backends.backend_agg"):
                raise SandboxViolation(f"the sandbox refused the {backend!r} backend: the "
                                       "renderer draws with Agg only; remove matplotlib.use() "
                                       "/ plt.switch_backend()")
            return real(backend, *args, **kwargs)
        return guarded

    matplotlib.use, plt.switch_backend = only_agg(use), only_agg(switch)


def _run(request: dict, prepared: dict) -> dict:
    import random
    import signal

    matplotlib, plt, np = prepared["modules"]
    code, limits = request["code"], request["limits"]
    width, height, dpi = int(request["width"]), int(request["height"]), float(request["dpi"])
    lines = code.splitlines()
    if width * height > limits["max_pixels"]:
        return {"ok": False, "kind": "pixels",
                "error": f"The requested size {width} x {height} px is more than the limit of "
                         f"{limits['max_pixels']:,} px; ask for a smaller figure."}
    folder = os.path.realpath(os.getcwd())
    stdout = _BoundedText(int(limits["stdout_kb"] * 1024), strict=True)
    stderr = _BoundedText(16 * 1024, strict=False)
    try:
        code_obj = compile(code, CODE_FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None) or 0
        text = (lines[line - 1].strip() if 0 < line <= len(lines) else "")
        return {"ok": False, "kind": "syntax",
                "error": f"SyntaxError at line {line}: {getattr(exc, 'msg', exc)}"
                         + (f": `{text}`" if text else "") + ". Fix the syntax; nothing ran."}

    matplotlib.rcdefaults()
    matplotlib.rcParams["svg.hashsalt"] = "science-t2i"  # deterministic ids in any SVG output
    plt.close("all")
    random.seed(0)
    np.random.seed(0)
    created: list = []
    _install_drawing_guards(matplotlib, plt, limits["max_pixels"], created)
    layers = request.get("layers", ["kernel", "python"])
    guards = "python" in layers   # off only in tests: the kernel's layer alone must hold
    user_globals = {"__name__": "__main__",
                    "__builtins__": _user_builtins(stdout, stderr) if guards else builtins}

    def on_cpu(signum, frame):  # ITIMER_PROF: exact; SIGXCPU (RLIMIT_CPU): the backstop
        raise _Stop("cpu", "cpu")

    def on_wall(signum, frame):
        raise _Stop("wall", "wall")

    set_timer = signal.setitimer
    signal.signal(signal.SIGXCPU, on_cpu)
    signal.signal(signal.SIGPROF, on_cpu)
    wrote_too_much = []
    # a write past RLIMIT_FSIZE then fails with EFBIG, which numpy may re-word: remember it
    signal.signal(signal.SIGXFSZ, lambda signum, frame: wrote_too_much.append(True))
    signal.signal(signal.SIGALRM, on_wall)
    # root becomes nobody where it can: part of the kernel's layer (tests switch it off)
    _apply_limits(limits, folder, prepared["drop_root"] and "kernel" in layers)
    os.environ.clear()
    if "kernel" in layers:
        try:
            _lock_kernel(prepared["kernel"], prepared["roots"], folder)
        except OSError as exc:   # nothing of the code has run: refuse rather than run weaker
            return {"ok": False, "kind": "kernel",
                    "error": f"The kernel sandbox could not be set up ({exc}); no code ran."}
    violations: list = []
    import _thread
    import posix
    hook = _make_audit_hook(
        folder=folder, **prepared["roots"],
        import_tops=ALLOWED_IMPORTS | LIBRARY_IMPORTS, blocked=_BLOCKED_EVENTS,
        prefixes=_BLOCKED_PREFIXES, gated=_USER_GATED_EVENTS, folder_events=_FOLDER_EVENTS,
        write_flags=_WRITE_FLAGS, code_filename=CODE_FILENAME, lstat=posix.lstat,
        readlink=posix.readlink, getcwd=posix.getcwd, getframe=sys._getframe,
        get_ident=_thread.get_ident, violations=violations, refused=_Refused,
        import_refused=_ImportRefused, own_filename=_run.__code__.co_filename,
        max_files=MAX_FILES)
    if guards:
        for d, key, stub in prepared["scrub"]:
            d[key] = stub
    sys.stdout, sys.stderr = stdout, stderr
    if guards:
        sys.addaudithook(hook)
    del hook
    set_timer(signal.ITIMER_REAL, float(limits["wall_seconds"]), 0.25)
    set_timer(signal.ITIMER_PROF, float(limits["cpu_seconds"]), 0.25)
    failure = None
    try:
        exec(code_obj, user_globals)  # noqa: S102 -- the sandboxed run itself
        figure = _take_figure(matplotlib, plt, created, limits["max_pixels"])
        # the exact pixel size: Agg truncates width_in * dpi, so aim a hair above the integer
        figure.set_dpi(dpi)
        figure.set_size_inches((width + 1e-3) / dpi, (height + 1e-3) / dpi, forward=False)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
        png = buffer.getvalue()
        try:   # whatever the code left under that name (a FIFO would block the write)
            os.unlink(PNG_NAME)
        except FileNotFoundError:
            pass
        with open(PNG_NAME, "xb") as f:
            f.write(png)
    except BaseException as exc:  # noqa: BLE001 -- everything the code does ends up in a message
        failure = exc
    set_timer(signal.ITIMER_REAL, 0, 0)
    set_timer(signal.ITIMER_PROF, 0, 0)
    # what the code did (the hook's private record first); describing it must not add to it
    violations = violations[:] + _REFUSALS[:]
    if failure is None and not violations:
        return {"ok": True, "stdout": stdout.getvalue(), "width": width, "height": height}
    kind, error = _describe(failure, lines, limits, violations, bool(wrote_too_much))
    if matplotlib.rcParams["text.usetex"]:  # fails on the latex run or its cache folder
        error = ("Blocked: LaTeX (text.usetex=True) is not available in the sandbox, which runs "
                 "no programs; remove it and write formulas with matplotlib's mathtext, e.g. "
                 "'$E = mc^2$'.")
    return {"ok": False, "kind": kind, "error": error, "stdout": stdout.getvalue()}


def main() -> int:
    # fd 1 becomes the private status channel; anything else writing to fd 1 goes nowhere
    status_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    import faulthandler
    faulthandler.enable()  # a crash prints the code's line on stderr, which the parent reads

    def send(status: dict) -> None:
        data = (json.dumps(status) + "\n").encode("utf-8", "replace")
        while data:
            data = data[os.write(status_fd, data):]

    try:  # everything that does not depend on the request happens before READY
        prepared = {"modules": _warm_up(), "scrub": _scrub_targets(), "roots": _read_roots(),
                    "kernel": _load_kernel()}
        prepared["drop_root"] = _others_can_read(prepared["roots"])
    except BaseException as exc:  # noqa: BLE001 -- e.g. matplotlib missing: the parent says so
        send({"ok": False, "kind": "startup", "error": f"{type(exc).__name__}: {exc}"})
        return 3
    os.write(status_fd, READY)
    try:
        request = json.loads(sys.stdin.buffer.readline() or b"null")
    except ValueError:
        request = None
    if not isinstance(request, dict):
        send({"ok": False, "kind": "protocol", "error": "no request"})
        return 2
    exit_now = os._exit
    try:
        status = _run(request, prepared)
    except BaseException as exc:  # noqa: BLE001 -- e.g. a limit hit just after the code ran
        try:
            kind, error = _describe(exc, str(request.get("code", "")).splitlines(),
                                    request["limits"], [])
        except Exception:  # noqa: BLE001
            kind, error = "internal", f"The renderer failed: {type(exc).__name__}: {exc}"
        status = {"ok": False, "kind": kind, "error": error}
    send(status)
    exit_now(0)  # no interpreter shutdown: nothing of the code's runs after its result
    return 0


if __name__ == "__main__":
    sys.exit(main())
