"""The figure sandbox's messages for a child that left no status line (killed by a limit,
crashed, stopped early), written for a model to repair its code from."""
from __future__ import annotations

import signal

from . import sandbox_child as _child


def _crash_line(stderr: bytes, code: str) -> str:
    """' at line N: `source`' from a faulthandler dump of the figure code's frame."""
    marker = f'File "{_child.CODE_FILENAME}", line '
    text = stderr.decode("utf-8", "replace")
    at = text.find(marker)
    if at < 0:
        return ""
    digits = "".join(c for c in text[at + len(marker):].split()[0] if c.isdigit())
    lines = code.splitlines()
    if not digits or not 0 < int(digits) <= len(lines):
        return ""
    return f" at line {digits}: `{lines[int(digits) - 1].strip()[:160]}`"


def explain_exit(child, state: str, code: int, cpu: float, limits,
                source: str) -> str:
    """The message when the child left no status line (killed, crashed, exited early)."""
    if state == "timeout":
        return (f"Wall-clock time limit ({limits.wall_seconds:g} s) exceeded: the code was still "
                "running and was stopped (an endless loop, or a blocking call?); make it finish "
                "quickly.")
    if state == "overflow":
        return ("Output limit exceeded: the code flooded the renderer's status channel; print "
                "less and do not write to file descriptors.")
    where = _crash_line(bytes(child.err), source)
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= limits.cpu_seconds - 0.5):
        return (f"CPU time limit ({limits.cpu_seconds:g} s) exceeded{where}: the code computes "
                "too much (an endless loop, or far too many points); make it cheaper.")
    if code == -signal.SIGXFSZ:
        return (f"Output limit exceeded: the code wrote more than {limits.output_mb} MB of "
                "files; figure code should not write files.")
    if code == -signal.SIGKILL:
        return (f"The renderer was killed by the system{where}, most likely for using too "
                f"much memory (limit {limits.memory_mb} MB); use smaller arrays.")
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return (f"The renderer crashed ({name}){where}; this usually means memory ran out or a "
                "library was given extreme input; simplify the figure.")
    if b"MemoryError" in child.err:
        return f"Memory limit ({limits.memory_mb} MB) exceeded{where}; use smaller arrays."
    return (f"The renderer stopped without a result (exit code {code}){where}: the code probably "
            "ended the process itself; remove any exit call.")
