"""Running untrusted Python (model output) in a sandboxed subprocess.

Backends, strongest first; the first available is used and named in the log:

Both isolating backends show the program the same root, built from an allowlist
(:func:`allowlist`): ``/usr``, ``/etc``, the ``/bin``, ``/lib``… links and the
interpreter's own prefix, bound read-only; fresh tmpfs at ``/tmp`` (the work dir) and
``/dev/shm``, both size-limited (``tmpfs_mb``) and gone with the run; a minimal ``/dev``;
the namespace's own ``/proc``; the scaffold read-only — so the host's home dirs, the
project's sources, /var, /run and the host's /dev/shm are out of sight. The program runs
as uid 65534 with no capabilities, in new mount, network and PID namespaces at least.

- ``bwrap`` (bubblewrap): every namespace unshared, dies with its parent, new session.
- ``unshare`` (util-linux, needs root): the root is built in a new mount namespace and
  the program chrooted into it, capabilities dropped with ``setpriv``, so the process
  cap applies; ``/dev`` holds only null, zero, random, urandom. The namespace's processes
  all die with its init.
- ``none``: a plain subprocess with the same rlimits but no isolation — refused unless
  the user explicitly allows unsandboxed code.

Every backend: wall-time limit (the process group is killed), CPU-seconds, address-space,
file-size and process-count rlimits, an empty environment, and stdout/stderr capped
(a program that prints more is killed).

Run lifecycle::

    spawn (own session) ──► running ──exit──► done (returncode, capped output)
                              ├─ wall time passes ──► killed (process group) ──► "timeout"
                              └─ output over cap ───► killed (process group) ──► "output_limit"
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)
NOBODY = 65534
BACKENDS = ("bwrap", "unshare", "none")


class SandboxUnavailable(RuntimeError):
    """No isolating backend, and unsandboxed execution was not allowed."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    nproc: int = 32
    fsize_mb: int = 16
    output_bytes: int = 1 << 20
    tmpfs_mb: int = 64


@dataclass(frozen=True)
class RunResult:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    killed: str | None = None  # "timeout" | "output_limit" | None

    @property
    def ok(self) -> bool:
        return self.killed is None and self.returncode == 0


def sandbox_python() -> str:
    """The interpreter the sandbox runs (read-only, ``-I``: stdlib only): the real binary
    behind this venv's python, since the sandbox's fresh /tmp hides anything under /tmp —
    a venv there included."""
    real = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if real == "/tmp" or real.startswith("/tmp/"):
        raise SandboxUnavailable(f"the interpreter {real} lies under /tmp, which the sandbox replaces")
    return real


def backend_works(backend: str) -> bool:
    """Whether ``backend`` can isolate a program on this machine (a probe run)."""
    if backend == "bwrap":
        argv = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "true"]
    elif backend == "unshare":
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            return False
        argv = ["unshare", "--mount", "--net", "--pid", "--fork", "--", "true"]
    else:
        return backend == "none"
    if not shutil.which(argv[0]):
        return False
    return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0


def detect_backend() -> str:
    return next((b for b in BACKENDS if backend_works(b)), "none")


def allowlist(python: str) -> list[str]:
    """The host paths a sandboxed program sees, read-only: the system's programs, libraries
    and configuration, and the interpreter's own prefix (``/usr/…`` lies inside /usr)."""
    prefix = os.path.dirname(os.path.dirname(python))  # .../bin/python3 -> ...
    paths = ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/lib32", prefix]
    return [p for p in dict.fromkeys(paths) if p == "/usr" or not p.startswith("/usr/")]


class Sandbox:
    def __init__(self, backend: str, limits: Limits = Limits(), python: str | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {backend!r}")
        self.backend = backend
        self.limits = limits
        self.python = python or sandbox_python()

    def _argv(self) -> list[str]:
        py = [self.python, "-I", "-"]
        if self.backend == "bwrap":
            size = str(self.limits.tmpfs_mb << 20)
            binds = []
            for path in allowlist(self.python):
                if os.path.islink(path):
                    binds += ["--symlink", os.readlink(path), path]
                elif os.path.isdir(path):
                    binds += ["--ro-bind", path, path]
            return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--uid", str(NOBODY),
                    "--gid", str(NOBODY), *binds, "--size", size, "--tmpfs", "/tmp", "--dev", "/dev",
                    "--size", size, "--tmpfs", "/dev/shm", "--proc", "/proc", "--remount-ro", "/",
                    "--chdir", "/tmp", "--clearenv", *py]
        if self.backend == "unshare":
            inner = (
                f"{self._allowlisted_root('/tmp')} && "
                f"exec /usr/sbin/chroot /tmp /usr/bin/env -i -C /tmp /usr/bin/setpriv --reuid={NOBODY} "
                f"--regid={NOBODY} --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs "
                + " ".join(py)
            )
            return ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                    "--mount-proc", "--", "/bin/sh", "-ec", inner]
        return py

    def _allowlisted_root(self, root: str) -> str:
        """Shell commands (run as root in the new mount namespace) that build the program's
        root at ``root``: a small tmpfs holding read-only binds of the allowlist, private
        /tmp and /dev/shm, four device nodes and the namespace's /proc; then the scaffold
        itself goes read-only."""
        size = self.limits.tmpfs_mb
        steps = [f"mount -t tmpfs -o size=1m,mode=755 tmpfs {root}"]
        for path in allowlist(self.python):
            steps.append(f"if [ -L {path} ]; then ln -s \"$(readlink {path})\" {root}{path}; "
                         f"elif [ -d {path} ]; then mkdir -p {root}{path} && mount --rbind {path} {root}{path} "
                         f"&& mount -o remount,bind,ro {root}{path}; fi")
        steps += [f"mkdir -p {root}/tmp {root}/proc {root}/dev/shm",
                  f"mount -t tmpfs -o size={size}m,mode=1777 tmpfs {root}/tmp",
                  f"mount -t tmpfs -o size={size}m,mode=1777 tmpfs {root}/dev/shm",
                  *(f"touch {root}/dev/{d} && mount --bind /dev/{d} {root}/dev/{d}"
                    for d in ("null", "zero", "random", "urandom")),
                  f"mount -t proc proc {root}/proc",
                  f"mount -o remount,ro {root}"]
        return " && ".join(steps)

    def _rlimits(self) -> list[str]:
        """The limits as a ``prlimit`` prefix, applied by exec, not by Python code run in
        the forked child (``preexec_fn``): in a process that has loaded gRPC (an actor's
        weight client) a forked child runs gRPC's fork handlers, which restart its poller
        threads, and those abort the child ("epoll_wait error: Bad file descriptor") once
        subprocess closes the inherited fds — a correct program scored as failed. Without
        preexec_fn, subprocess uses vfork, which runs no fork handlers."""
        lim = self.limits
        return ["prlimit", f"--cpu={lim.cpu_s}:{lim.cpu_s + 1}", f"--as={lim.memory_mb << 20}",
                f"--fsize={lim.fsize_mb << 20}", f"--nproc={lim.nproc}", "--core=0", "--"]

    def run_python(self, source: str) -> RunResult:
        """Run ``source`` (fed on stdin) under the limits; never raises for what the
        program does."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"} if self.backend != "none" else {}
        proc = subprocess.Popen(
            [*self._rlimits(), *self._argv()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, cwd="/", start_new_session=True,
        )
        try:
            proc.stdin.write(source.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        out, err, killed = self._collect(proc)
        return RunResult(proc.returncode, out, err, killed)

    def _collect(self, proc: subprocess.Popen) -> tuple[bytes, bytes, str | None]:
        deadline = time.monotonic() + self.limits.wall_s
        buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        killed = None
        with selectors.DefaultSelector() as sel:
            for f in buffers:
                sel.register(f, selectors.EVENT_READ)
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    killed = "timeout"
                    break
                for key, _ in sel.select(timeout=min(remaining, 0.5)):
                    data = os.read(key.fileobj.fileno(), 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    buffers[key.fileobj] += data
                    if sum(map(len, buffers.values())) > self.limits.output_bytes:
                        killed = "output_limit"
                        break
                if killed:
                    break
        # Always: children that outlived the program (a fork bomb's) go with its group.
        _kill_group(proc)
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed = killed or "timeout"
            _kill_group(proc)
            proc.wait()
        for f in buffers:
            f.close()
        cap = self.limits.output_bytes
        return bytes(buffers[proc.stdout][:cap]), bytes(buffers[proc.stderr][:cap]), killed


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def make_sandbox(limits: Limits = Limits(), *, allow_unsandboxed: bool = False,
                 backend: str | None = None) -> Sandbox:
    """The strongest available backend; ``none`` only when explicitly allowed."""
    chosen = backend or detect_backend()
    if chosen == "none" and not allow_unsandboxed:
        raise SandboxUnavailable(
            "no sandbox for generated code: install bubblewrap (`bwrap`) or run as root with "
            "util-linux `unshare`/`setpriv`; or set [actor] allow_unsandboxed_code = true "
            "to run model output without isolation")
    if chosen == "none":
        log.warning("running generated code WITHOUT a sandbox (allowed by configuration)")
    else:
        log.info("generated code runs in the %r sandbox", chosen)
    return Sandbox(chosen, limits)
