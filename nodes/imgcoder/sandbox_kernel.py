"""The kernel's half of the figure sandbox: Landlock, seccomp and dropped capabilities, set
by the renderer child on itself just before model code runs (Linux, x86-64 and aarch64).

Standard library and ctypes only: ``sandbox_child.py`` loads this file by path (it imports
nothing from the pack), and ``sandbox.py`` imports it to check, before any render, that the
kernel offers what ``lock`` needs.

What ``lock`` enforces, whatever the uid (root included):
- no_new_privs, then every capability dropped (effective, permitted, inheritable, the
  bounding set): a root child keeps uid 0 but none of root's powers;
- Landlock (ABI 1 or newer): reading only below the given read-only paths (the interpreter,
  its libraries, matplotlib's data and fonts), writing only below the render's folder;
  nothing else, /proc (other processes' environments) and home folders included. With ABI 4
  or newer TCP bind/connect are refused too, with ABI 6 signals and abstract Unix sockets
  outside the sandbox;
- seccomp: no sockets of any family (so no TCP, UDP, Unix or DNS), no fork, clone or exec,
  no ptrace or reading other processes' memory, signals and scheduling / priority / rlimit
  calls only aimed at itself, no memfd or System V / POSIX shared memory, no io_uring (which
  would bypass the filter), no mount, namespace, keyring, bpf, module or handle-based open
  calls; anything else is as before. Another architecture (x32, 32-bit ARM) is killed.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# Landlock (include/uapi/linux/landlock.h)
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446   # the same on every architecture
_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1                   # execute .. make_sym
_FS_BY_ABI = {1: _FS_ABI1, 2: _FS_ABI1 | 1 << 13, 3: _FS_ABI1 | 1 << 13 | 1 << 14}
_FS_FILE_ONLY = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | 1 << 14 | 1 << 15
_NET_TCP = (1 << 0) | (1 << 1)             # bind, connect (ABI 4)
_SCOPE_ALL = (1 << 0) | (1 << 1)           # abstract unix sockets, signals (ABI 6)

# seccomp (include/uapi/linux/seccomp.h, filter.h, audit.h)
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _PR_CAPBSET_DROP = 38, 22, 24
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_ERRNO = 0x00050000
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06

_ARCHES = {
    "x86_64": {
        "audit": 0xC000003E, "x32_bit": 0x40000000,
        "deny": {
            "socket": 41, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58,
            "execve": 59, "ptrace": 101, "syslog": 103, "uselib": 134, "personality": 135,
            "vhangup": 153, "modify_ldt": 154, "pivot_root": 155, "adjtimex": 159,
            "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166,
            "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170,
            "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
            "delete_module": 176, "quotactl": 179, "clock_settime": 227, "mq_open": 240,
            "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
            "ioprio_set": 251, "migrate_pages": 256, "unshare": 272, "move_pages": 279,
            "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
            "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
            "finit_module": 313, "memfd_create": 319, "kexec_file_load": 320, "bpf": 321,
            "execveat": 322, "userfaultfd": 323, "pidfd_send_signal": 424,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
            "fsmount": 432, "fspick": 433, "pidfd_open": 434, "process_madvise": 440,
            "mount_setattr": 442, "memfd_secret": 447, "shmget": 29, "shmat": 30,
            "shmctl": 31},
        "clone3": 435,
        # syscall -> (argument holding the target pid, 0 also allowed: "this process")
        "self_only": {"kill": (62, 0, False), "tkill": (200, 0, False),
                      "tgkill": (234, 0, False), "rt_sigqueueinfo": (129, 0, False),
                      "rt_tgsigqueueinfo": (297, 0, False),
                      "sched_setparam": (142, 0, True), "sched_setscheduler": (144, 0, True),
                      "sched_setaffinity": (203, 0, True), "sched_setattr": (314, 0, True),
                      "prlimit64": (302, 0, True), "setpriority": (141, 1, True)},
    },
    "aarch64": {
        "audit": 0xC00000B7, "x32_bit": None,
        "deny": {
            "socket": 198, "socketpair": 199, "clone": 220, "execve": 221, "ptrace": 117,
            "syslog": 116, "personality": 92, "vhangup": 58, "pivot_root": 41,
            "adjtimex": 171, "chroot": 51, "acct": 89, "settimeofday": 170, "mount": 40,
            "umount2": 39, "swapon": 224, "swapoff": 225, "reboot": 142, "sethostname": 161,
            "setdomainname": 162, "init_module": 105, "delete_module": 106, "quotactl": 60,
            "clock_settime": 112, "mq_open": 180, "kexec_load": 104, "add_key": 217,
            "request_key": 218, "keyctl": 219, "ioprio_set": 30, "migrate_pages": 238,
            "unshare": 97, "move_pages": 239, "perf_event_open": 241,
            "name_to_handle_at": 264, "open_by_handle_at": 265, "setns": 268,
            "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
            "finit_module": 273, "memfd_create": 279, "kexec_file_load": 294, "bpf": 280,
            "execveat": 281, "userfaultfd": 282, "pidfd_send_signal": 424,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
            "fsmount": 432, "fspick": 433, "pidfd_open": 434, "process_madvise": 440,
            "mount_setattr": 442, "memfd_secret": 447, "shmget": 194, "shmat": 196,
            "shmctl": 195},
        "clone3": 435,
        "self_only": {"kill": (129, 0, False), "tkill": (130, 0, False),
                      "tgkill": (131, 0, False), "rt_sigqueueinfo": (138, 0, False),
                      "rt_tgsigqueueinfo": (240, 0, False),
                      "sched_setparam": (118, 0, True), "sched_setscheduler": (119, 0, True),
                      "sched_setaffinity": (122, 0, True), "sched_setattr": (274, 0, True),
                      "prlimit64": (261, 0, True), "setpriority": (140, 1, True)},
    },
}


class KernelSandboxError(OSError):
    """The kernel refused a step of ``lock`` (the child reports it; nothing runs)."""


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    return libc


def landlock_abi() -> int:
    """Landlock's ABI version, or 0 where there is none (not Linux, too old, disabled)."""
    if platform.system() != "Linux":
        return 0
    libc = _libc()
    abi = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_RULESET_VERSION))
    return max(int(abi), 0)


def support() -> tuple[bool, str]:
    """(True, what is enforced) where ``lock`` can run here, else (False, why not)."""
    if platform.system() != "Linux":
        return False, f"the kernel sandbox needs Linux (Landlock and seccomp); this is " \
                      f"{platform.system() or 'an unknown system'}"
    arch = platform.machine()
    if arch not in _ARCHES:
        return False, f"the kernel sandbox knows the system calls of x86_64 and aarch64, " \
                      f"not {arch}"
    abi = landlock_abi()
    if abi < 1:
        return False, (f"this Linux kernel ({platform.release()}) offers no Landlock (it "
                       "needs 5.13 or newer with Landlock enabled, e.g. lsm=landlock,...), or "
                       "a container's seccomp profile forbids it")
    libc = _libc()
    if libc.prctl(21, 0, 0, 0, 0) < 0:   # PR_GET_SECCOMP
        return False, "this kernel has no seccomp filtering (CONFIG_SECCOMP_FILTER)"
    return True, f"Landlock ABI {abi} and seccomp on {arch}"


# ----------------------------------------------------------------------------- landlock

def _landlock(read_paths: list[str], write_paths: list[str]) -> int:
    libc = _libc()
    abi = landlock_abi()
    fs = _FS_BY_ABI.get(abi, _FS_BY_ABI[3] | (1 << 15))   # ABI 5+: ioctl on devices too
    fields = [fs]
    if abi >= 4:
        fields.append(_NET_TCP)
    if abi >= 6:
        fields.append(_SCOPE_ALL)
    attr = struct.pack(f"<{len(fields)}Q", *fields)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise KernelSandboxError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        read = FS_READ_FILE | FS_READ_DIR
        for paths, access in ((read_paths, read), (write_paths, fs & ~FS_EXECUTE)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue   # a path that is not there needs no rule
                try:
                    allowed = access if os.path.isdir(path) else access & _FS_FILE_ONLY
                    rule = ctypes.create_string_buffer(struct.pack("<Qi", allowed, fd), 12)
                    if libc.syscall(_ADD_RULE, ctypes.c_int(ruleset),
                                    ctypes.c_int(_RULE_PATH_BENEATH), rule,
                                    ctypes.c_uint32(0)) < 0:
                        raise KernelSandboxError(ctypes.get_errno(),
                                                 f"landlock_add_rule failed for {path}")
                finally:
                    os.close(fd)
        if libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise KernelSandboxError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


# ----------------------------------------------------------------------------- seccomp

def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def seccomp_program(arch: str, pid: int) -> list[bytes]:
    """The filter: (see the module doc). Arguments are compared on their low 32 bits (pids
    are 32-bit), so a negative pid (a process group, every process) is never this pid."""
    table = _ARCHES[arch]
    deny = _RET_ERRNO | errno.EPERM
    prog = [_bpf(_LD_W_ABS, 0, 0, 4),                       # seccomp_data.arch
            _bpf(_JEQ_K, 1, 0, table["audit"]),
            _bpf(_RET_K, 0, 0, _RET_KILL_PROCESS),
            _bpf(_LD_W_ABS, 0, 0, 0)]                       # seccomp_data.nr
    if table["x32_bit"]:
        prog += [_bpf(_JGE_K, 0, 1, table["x32_bit"]), _bpf(_RET_K, 0, 0, _RET_KILL_PROCESS)]
    # clone3 answers "not implemented", so libc falls back to clone, which is refused
    prog += [_bpf(_JEQ_K, 0, 1, table["clone3"]), _bpf(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    for nr in sorted(set(table["deny"].values())):
        prog += [_bpf(_JEQ_K, 0, 1, nr), _bpf(_RET_K, 0, 0, deny)]
    for name, (nr, arg, zero_is_self) in table["self_only"].items():
        checks = [_bpf(_LD_W_ABS, 0, 0, 16 + 8 * arg)]      # seccomp_data.args[arg], low word
        allowed_pids = [pid] + ([0] if zero_is_self else [])
        if name == "setpriority":   # which must be PRIO_PROCESS: PRIO_USER 0 is every process
            checks = [_bpf(_LD_W_ABS, 0, 0, 16), _bpf(_JEQ_K, 1, 0, 0),
                      _bpf(_RET_K, 0, 0, deny)] + checks
        body = checks + [_bpf(_JEQ_K, len(allowed_pids) - i, 0, p)
                         for i, p in enumerate(allowed_pids)]
        body += [_bpf(_RET_K, 0, 0, deny), _bpf(_RET_K, 0, 0, _RET_ALLOW)]
        prog += [_bpf(_JEQ_K, 0, len(body), nr)] + body + [_bpf(_LD_W_ABS, 0, 0, 0)]
    prog.append(_bpf(_RET_K, 0, 0, _RET_ALLOW))
    return prog


def _seccomp(pid: int) -> None:
    arch = platform.machine()
    prog = seccomp_program(arch, pid)
    code = b"".join(prog)
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    if _libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) < 0:
        raise KernelSandboxError(ctypes.get_errno(), "installing the seccomp filter failed")


# ----------------------------------------------------------------------------- capabilities

def _drop_capabilities() -> None:
    """Empty the bounding set and the effective, permitted and inheritable sets."""
    libc = _libc()
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() == errno.EINVAL:
            break   # past the last capability this kernel knows
    header = struct.pack("<Ii", 0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)                              # two {effective, permitted, inheritable}
    if libc.capset(ctypes.create_string_buffer(header, 8),
                   ctypes.create_string_buffer(data, 24)) < 0:
        raise KernelSandboxError(ctypes.get_errno(), "dropping capabilities failed")


def lock(read_paths: list[str], write_paths: list[str]) -> str:
    """Confine this process for good (see the module doc); returns what was enforced."""
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
        raise KernelSandboxError(ctypes.get_errno(), "no_new_privs failed")
    _drop_capabilities()
    abi = _landlock(read_paths, write_paths)
    _seccomp(os.getpid())
    return f"Landlock ABI {abi}, seccomp, no capabilities"
