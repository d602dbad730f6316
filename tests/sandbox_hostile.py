"""Hostile figure programs, one per class of escape, each with the proof that it escaped.

``run_all(layers)`` renders every program in a SandboxPool using only ``layers`` (the tests
switch the Python-level guards off, so the kernel's layer alone has to hold; with no layer at
all each program shows its escape) and returns, per program, whether it escaped. Run as a
script (``python sandbox_hostile.py kernel``) it prints that as JSON: the tests run it as an
ordinary user too.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from science_t2i.nodes.imgcoder.sandbox import SandboxPool

DRAW = "\nimport matplotlib.pyplot as plt\nplt.plot([0, 1], [0, 1])\n"


class Listener:
    """TCP, UDP and Unix listeners on this machine: what reaches them is an escape."""

    def __init__(self, folder: Path):
        self.received: list[bytes] = []
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(4)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = str(folder / "listener.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.unix.listen(4)
        for s in (self.tcp, self.udp, self.unix):
            s.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            for s in (self.tcp, self.unix):
                try:
                    conn, _ = s.accept()
                    conn.settimeout(1)
                    self.received.append(conn.recv(100) or b"connected")
                    conn.close()
                except OSError:
                    pass
            try:
                self.received.append(self.udp.recvfrom(100)[0])
            except OSError:
                pass

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for s in (self.tcp, self.udp, self.unix):
            s.close()


def programs(canary: Path, outside: Path, listener: Listener) -> dict[str, dict]:
    """name -> code and the check that says it escaped (given the render's stdout)."""
    tcp, udp = listener.tcp.getsockname()[1], listener.udp.getsockname()[1]
    marker = outside / "marker"
    spawned = outside / "spawned"
    return {
        "read a file elsewhere": {
            "code": f"print(open({str(canary)!r}).read())" + DRAW,
            "escaped": lambda out: canary.read_text() in out},
        "read the parent's environment": {
            "code": "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())"
                    + DRAW,
            "escaped": lambda out: "PATH=" in out},
        "write a file elsewhere": {
            "code": f"open({str(marker)!r}, 'w').write('x')" + DRAW,
            "escaped": lambda out: marker.exists()},
        "start a process": {
            "code": f"import os\nos.system('touch {spawned}')" + DRAW,
            "escaped": lambda out: spawned.exists()},
        "exec another program": {
            "code": f"import os\npid = os.fork()\nif pid == 0:\n"
                    f"    os.execv('/usr/bin/touch', ['touch', '{spawned}-exec'])\n"
                    "os.waitpid(pid, 0)" + DRAW,
            "escaped": lambda out: Path(f"{spawned}-exec").exists()},
        "connect over TCP": {
            "code": f"import socket\ns = socket.create_connection(('127.0.0.1', {tcp}))\n"
                    "s.sendall(b'tcp-leak')\ns.close()" + DRAW,
            "escaped": lambda out: b"tcp-leak" in listener.received},
        "send over UDP": {
            "code": "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    f"s.sendto(b'udp-leak', ('127.0.0.1', {udp}))" + DRAW,
            "escaped": lambda out: b"udp-leak" in listener.received},
        "connect to a Unix socket": {
            "code": "import socket\ns = socket.socket(socket.AF_UNIX)\n"
                    f"s.connect({listener.unix_path!r})\ns.sendall(b'unix-leak')" + DRAW,
            "escaped": lambda out: b"unix-leak" in listener.received},
        "signal the parent": {
            "code": "import os, signal\nos.kill(os.getppid(), signal.SIGUSR1)" + DRAW,
            "escaped": lambda out: bool(SIGNALS)},
        "change the parent's affinity": {
            "code": "import os\nos.sched_setaffinity(os.getppid(), {0})" + DRAW,
            "escaped": lambda out: os.sched_getaffinity(0) == {0}},
        "change the parent's priority": {
            "code": "import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 7)" + DRAW,
            "escaped": lambda out: os.getpriority(os.PRIO_PROCESS, 0) == 7},
        "hold memory in a memfd": {
            "code": "import os\nfd = os.memfd_create('x')\nos.ftruncate(fd, 1 << 20)\n"
                    "print('memfd', fd)" + DRAW,
            "escaped": lambda out: "memfd" in out},
        "plant a file for the next render": {
            "code": "import os\nmaster = os.path.join(os.path.dirname(os.getcwd()), "
                    "'mpl-master')\nopen(os.path.join(master, 'fontlist-v999.json'), 'w')"
                    ".write('{\"planted\": 1}')" + DRAW,
            "next": "import os\nprint(sorted(os.listdir(os.environ.get('MPLCONFIGDIR', '.'))"
                    " if 'MPLCONFIGDIR' in os.environ else os.listdir('.mpl')))" + DRAW,
            "escaped": lambda out: "fontlist-v999.json" in out},
    }


SIGNALS: list[int] = []


def run_all(layers: tuple[str, ...], folder: Path) -> dict[str, bool]:
    """Each program in a fresh pool with only ``layers``; name -> escaped."""
    folder.mkdir(parents=True, exist_ok=True)
    canary = folder / "canary.txt"
    canary.write_text("canary-7f3a")
    os.chmod(canary, 0o644)
    outside = folder / "outside"
    outside.mkdir(exist_ok=True)
    os.chmod(outside, 0o777)
    os.chmod(folder, 0o755)
    listener = Listener(folder)
    before = (os.sched_getaffinity(0), os.getpriority(os.PRIO_PROCESS, 0))
    old = signal.signal(signal.SIGUSR1, lambda *a: SIGNALS.append(1))
    results = {}
    try:
        for name, p in programs(canary, outside, listener).items():
            SIGNALS.clear()
            with SandboxPool(spares=0, _layers=layers) as pool:
                result = pool.render(p["code"], width=64, height=48, _check=False)
                out = result.stdout
                if "next" in p:
                    out = pool.render(p["next"], width=64, height=48, _check=False).stdout
            # what was sent may still be on its way to the listener's thread
            deadline = time.monotonic() + (3 if "UDP" in name or "TCP" in name
                                           or "Unix" in name else 0)
            while not p["escaped"](out) and time.monotonic() < deadline:
                time.sleep(0.1)
            results[name] = bool(p["escaped"](out))
            os.sched_setaffinity(0, before[0])
            try:
                os.setpriority(os.PRIO_PROCESS, 0, before[1])
            except OSError:
                pass   # an ordinary user cannot lower its niceness again
    finally:
        signal.signal(signal.SIGUSR1, old)
        listener.close()
    return results


if __name__ == "__main__":
    layers = tuple(a for a in sys.argv[1:] if a)
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps({"uid": os.geteuid(), "results": run_all(layers, Path(d))}))
