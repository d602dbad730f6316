"""The static check of figure code, before it runs: imports outside the allow-list,
eval/exec/__import__/globals ..., dunder attributes, forbidden modules reached as attributes,
LaTeX. A second layer only: the sandbox's run-time guards stand on their own."""
from __future__ import annotations

import ast

from ..errors import ScienceT2IError
from . import sandbox_child as _child

ALLOWED_IMPORTS: frozenset[str] = _child.ALLOWED_IMPORTS
_ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__doc__", "__len__", "__call__"})
_FORBIDDEN_NAMES = {
    "__import__": "__import__() is not allowed; use a plain import of an allowed module",
    "eval": "eval() is not allowed; write the expression directly",
    "exec": "exec() is not allowed; write the code directly",
    "compile": "compile() is not allowed",
    "globals": "globals() is not allowed", "locals": "locals() is not allowed",
    "vars": "vars() is not allowed", "breakpoint": "breakpoint() is not allowed",
    "input": "input() is not allowed: the code gets no input",
    "__builtins__": "__builtins__ is not allowed",
    "exit": "exit() must not be called: the renderer saves the figure after the code ends",
    "quit": "quit() must not be called: the renderer saves the figure after the code ends",
}
# Modules figure code must not reach, neither by import nor as an attribute (matplotlib.os).
_FORBIDDEN_MODULES = frozenset({
    "os", "sys", "subprocess", "socket", "ctypes", "importlib", "builtins", "shutil",
    "pathlib", "io", "signal", "resource", "gc", "inspect", "threading", "multiprocessing",
    "pty", "posix", "nt", "tempfile", "pickle", "marshal", "runpy", "code", "codeop", "urllib",
    "http", "ftplib", "ssl", "asyncio", "mmap", "_posixsubprocess", "pwd", "platform",
    "sysconfig", "site", "glob", "fcntl", "types", "traceback", "linecache", "webbrowser",
})
_FORBIDDEN_ATTRS = _FORBIDDEN_MODULES | _child._FORBIDDEN_ATTRS | {
    "environ", "system", "popen", "fork", "forkpty", "execv", "execve", "spawnv", "_exit",
    "kill", "getenv", "putenv",
}


_NO_LATEX = ("LaTeX (text.usetex) is not available: the sandbox runs no programs; write "
             "formulas with matplotlib's mathtext, e.g. '$E = mc^2$'")


class _Checker(ast.NodeVisitor):
    def __init__(self):
        self.problems: list[str] = []
        self.matplotlib_names = {"matplotlib", "mpl"}  # for matplotlib.use(), not style.use()

    def flag(self, node: ast.AST, message: str) -> None:
        self.problems.append(f"line {getattr(node, 'lineno', 1)}: {message}")

    def check_module(self, node: ast.AST, name: str) -> None:
        if name.partition(".")[0] not in ALLOWED_IMPORTS and name != "__future__":
            self.flag(node, f"import of {name!r} is not allowed (allowed: "
                            f"{', '.join(sorted(ALLOWED_IMPORTS))})")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.check_module(node, alias.name)
            if alias.name == "matplotlib":
                self.matplotlib_names.add(alias.asname or alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.flag(node, "relative imports are not allowed")
            return
        self.check_module(node, node.module or "")
        for alias in node.names:
            if alias.name in _FORBIDDEN_MODULES:
                self.flag(node, f"importing {alias.name!r} from {node.module!r} is not allowed")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _FORBIDDEN_NAMES:
            self.flag(node, _FORBIDDEN_NAMES[node.id])

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr.startswith("__") and attr.endswith("__") and attr not in _ALLOWED_DUNDERS:
            self.flag(node, f"the attribute {attr!r} is not allowed (introspection)")
        elif attr in _FORBIDDEN_ATTRS:
            self.flag(node, f"the attribute {attr!r} is not allowed: figure code may not "
                            "reach the operating system or the interpreter")
        self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(target, ast.Name) and target.id in ("SystemExit", "KeyboardInterrupt"):
            self.flag(node, f"raising {target.id} ends the renderer; remove it")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else \
            func.attr if isinstance(func, ast.Attribute) else None
        args = {**dict(enumerate(node.args)), **{k.arg: k.value for k in node.keywords}}
        if name in ("getattr", "setattr", "delattr", "hasattr") and isinstance(func, ast.Name):
            attr = args.get(1)
            if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
                self.flag(node, f"{name}() with a computed attribute name is not allowed")
            elif attr.value.startswith("__") or attr.value in _FORBIDDEN_ATTRS:
                self.flag(node, f"{name}() of {attr.value!r} is not allowed (introspection)")
        elif name == "open" and isinstance(func, ast.Name):
            mode = args.get(1, args.get("mode"))
            if mode is not None and not (isinstance(mode, ast.Constant)
                                         and isinstance(mode.value, str)
                                         and not set(mode.value) & set("wax+")):
                self.flag(node, "open() may only read; the renderer saves the figure itself")
        elif isinstance(func, ast.Attribute) and (name == "switch_backend" or (
                name == "use" and isinstance(func.value, ast.Name)
                and func.value.id in self.matplotlib_names)):
            backend = args.get(0, args.get("backend", args.get("newbackend")))
            if isinstance(backend, ast.Constant) and str(backend.value).lower() != "agg":
                self.flag(node, f"backend {backend.value!r} is not available: the renderer "
                                "draws with Agg; remove matplotlib.use()/plt.switch_backend()")
        if any(k.arg == "usetex" and not _is_false(k.value) for k in node.keywords):
            self.flag(node, _NO_LATEX)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Subscript) and _is_usetex(target.slice) \
                    and not _is_false(node.value):
                self.flag(node, _NO_LATEX)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        if any(_is_usetex(k) and not _is_false(v) for k, v in zip(node.keys, node.values)):
            self.flag(node, _NO_LATEX)
        self.generic_visit(node)


def _is_usetex(node) -> bool:
    return isinstance(node, ast.Constant) and node.value == "text.usetex"


def _is_false(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def check_code(code: str) -> list[str]:
    """Problems found without running ``code`` ([] = none): syntax errors (with the line),
    imports outside ALLOWED_IMPORTS, eval/exec/__import__/globals ..., dunder attributes,
    open() for writing, other backends. The sandbox enforces the same rules at run time; this
    gives the model a precise message before a process is spent on it."""
    if not isinstance(code, str):
        raise ScienceT2IError(f"the figure code must be a string, got {type(code).__name__}")
    if not code.strip():
        return ["line 1: the code is empty; write a matplotlib program that draws the figure"]
    try:
        tree = ast.parse(code, filename=_child.CODE_FILENAME)
    except SyntaxError as exc:
        text = f": `{exc.text.strip()}`" if (exc.text or "").strip() else ""
        return [f"line {exc.lineno or 1}: syntax error: {exc.msg}{text}"]
    except ValueError as exc:  # e.g. null bytes
        return [f"line 1: the code cannot be parsed: {exc}"]
    checker = _Checker()
    checker.visit(tree)
    return list(dict.fromkeys(checker.problems))[:20]
