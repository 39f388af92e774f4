"""The compiled CPU kernels of the engine (``engine.c``), built on first use.

The kernels are plain C with no Python or torch headers, so a build takes a
fraction of a second with the system's C compiler and nothing is compiled at
install time: ``pip install`` stays pure Python, and a machine without a
compiler runs the eager torch path, which draws the same bits.

The shared library is cached under ``$RBD_CACHE_DIR`` (default
``$XDG_CACHE_HOME/rbd`` or ``~/.cache/rbd``), named by a hash of the source,
the compiler and the CPU's model and flags: it is built for this CPU
(``-march=native`` on x86; ARM compilers spell it ``-mcpu=native``, and some
reject ``-march=native``), so a home directory shared by unlike cluster nodes
gets one library per kind of node. A compiler that accepts neither spelling
builds for its baseline instruction set (SSE2, NEON), with one log line.
``RBD_ENGINE=eager`` turns the compiled path off; ``RBD_ENGINE=compiled``
makes a failed build an error instead of a fallback.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("engine.c")
ENGINE_ENV = "RBD_ENGINE"
ENGINE_CHOICES = ("auto", "compiled", "eager")
FLAGS = ("-O3", "-std=c11", "-fno-strict-aliasing", "-shared", "-fPIC")
ARM_MACHINES = ("aarch64", "arm64")

_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None
_TRIED = False
_ERROR = "not tried"


def engine_choice() -> str:
    """``RBD_ENGINE`` (auto, compiled or eager); anything else is an error naming it."""
    choice = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if choice not in ENGINE_CHOICES:
        raise ValueError(f"{ENGINE_ENV}={choice!r}: choose one of {ENGINE_CHOICES}")
    return choice


def cache_dir() -> Path:
    if "RBD_CACHE_DIR" in os.environ:
        return Path(os.environ["RBD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rbd"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _require_compiler() -> str:
    compiler = _compiler()
    if compiler is None:
        raise OSError("no C compiler found (looked for $CC, cc, gcc, clang)")
    return compiler


def target_flags(machine: str | None = None) -> tuple[tuple[str, ...], ...]:
    """The ways to ask the compiler for this CPU's instruction set, best first; the last,
    no flag at all, is the architecture's baseline."""
    machine = (machine or platform.machine()).lower()
    if machine in ARM_MACHINES or machine.startswith("arm"):
        return (("-mcpu=native",), ("-march=native",), ())
    return (("-march=native",), ())


def _cpu_signature() -> str:
    """The CPU's model and feature flags: what ``-march=native`` compiles for."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [
        line
        for line in text.splitlines()
        if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")
    ]
    return platform.machine() + "\n".join(sorted(set(keep)))


class BuildError(OSError):
    """The compiler refused: its message is ``stderr``."""

    def __init__(self, message: str, stderr: str):
        super().__init__(message)
        self.stderr = stderr


def _build(compiler: str, target: Path, extra_flags: tuple[str, ...] = ()) -> None:
    """Compile into a temporary file beside ``target``, then rename: processes that build
    at the same time each get a whole library. ``extra_flags`` follow FLAGS (the target's
    flags; tests build for narrower vector units with them)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, *extra_flags, str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:2000]}", done.stderr)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL | None:
    if sys.byteorder != "little":
        raise OSError("the kernels read words as little-endian halves; this CPU is big-endian")
    compiler = _require_compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    candidates = target_flags()
    digest = hashlib.sha256(
        SOURCE.read_bytes()
        + version.encode()
        + " ".join(FLAGS).encode()
        + repr(candidates).encode()
        + _cpu_signature().encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"engine-{digest}.so"
    if not target.exists():
        _build_for_this_cpu(compiler, target, candidates)
    return bind(ctypes.CDLL(str(target)))


def _build_for_this_cpu(compiler: str, target: Path, candidates) -> None:
    """Build with the first target flags the compiler accepts; falling back to the
    baseline instruction set is logged once (the kernels run, slower)."""
    rejected = []
    for flags in candidates[:-1]:
        try:
            _build(compiler, target, flags)
            return
        except BuildError as err:
            said = err.stderr.strip().splitlines() or ["no message"]
            rejected.append((" ".join(flags), said[-1][:200]))
    log.warning(
        "%s rejected %s (%s); compiled engine built for the baseline instruction set",
        Path(compiler).name,
        " and ".join(flags for flags, _ in rejected),
        rejected[0][1],
    )
    _build(compiler, target, candidates[-1])


def build_variant(target: Path, extra_flags: tuple[str, ...]) -> ctypes.CDLL:
    """The kernels compiled with ``extra_flags`` into ``target`` (not cached), bound: how a
    test runs the code a CPU with other vector units would get, on this one."""
    compiler = _require_compiler()
    _build(compiler, target, target_flags()[0] + extra_flags)
    return bind(ctypes.CDLL(str(target)))


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the kernels' argument types on a loaded library."""
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.rbd_fill.argtypes = [ptr, i64, i64, ctypes.c_int, ptr, ptr]
    lib.rbd_fill.restype = None
    lib.rbd_project.argtypes = [ptr, i64, i64, ctypes.c_int, ptr, ptr, ctypes.c_float, ctypes.c_int]
    lib.rbd_project.argtypes += [ptr, ptr]
    lib.rbd_project.restype = None
    lib.rbd_lanes.argtypes = []
    lib.rbd_lanes.restype = ctypes.c_int
    return lib


def kernel_width() -> str:
    """The compiled kernels' vector unit, as benchmarks name it beside their timings."""
    lib = library()
    if lib is None:
        return "eager torch ops (no compiled kernels)"
    lanes = lib.rbd_lanes()
    names = {16: "AVX-512", 8: "AVX2/AVX", 4: "128-bit: SSE or NEON"}
    return f"{32 * lanes} bits ({names.get(lanes, '?')}), {platform.machine()}"


def pointer(tensor) -> int:
    """The address of a contiguous CPU tensor's first element, for the kernels."""
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("the compiled kernels take contiguous CPU tensors")
    return tensor.data_ptr()


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they are off or cannot be built (logged once)."""
    global _LIBRARY, _TRIED, _ERROR
    choice = engine_choice()
    if choice == "eager":
        return None
    with _LOCK:
        if not _TRIED:
            _TRIED = True
            try:
                _LIBRARY = _load()
            except (OSError, subprocess.SubprocessError) as err:
                _ERROR = f"{type(err).__name__}: {err}"
                log.warning("compiled engine unavailable (%s); using the eager torch path", err)
        if _LIBRARY is None and choice == "compiled":
            raise RuntimeError(f"{ENGINE_ENV}=compiled but the kernels cannot be built ({_ERROR})")
        return _LIBRARY
