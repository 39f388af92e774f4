"""Warm starts for many short local training jobs: one process imports PyTorch once and
forks a training per request.

Every `rbd train` process spends about 4 s of CPU before its first step (``import torch``
of a CUDA build, then ``torch._dynamo``, which every ``torch.optim`` optimiser imports):
a third of the quick preset's CPU time on two cores. With ``warm_start: true`` (config)
the workflow starts ``python -m rbd.warm serve`` beside Snakemake and the jobs' launcher
runs ``python -m rbd.warm run train ...`` instead of ``python -m rbd train ...``:

- ``run`` (no torch import) connects to the server's Unix socket, hands over its argv,
  working directory, environment and standard streams, forwards SIGTERM / SIGINT /
  SIGHUP to the training and exits with its exit status. With no server to reach (none
  started yet, or a compute node of a cluster) it becomes ``python -m rbd`` itself: a
  cold start, the same training.
- ``serve`` imports rbd's training code, then forks one child per request. A child is
  the training: the client's streams as its own, ``rbd.cli.main(argv)``; it stops
  (SIGTERM) when its client goes away, e.g. killed by the job's scheduler. Only
  ``train`` is served, only to the server's own user. The server exits when its owner
  (Snakemake) does, on SIGTERM, or when its socket is replaced or removed.

Forking after ``import torch`` is what DataLoader workers do; the server never runs a
tensor op or touches CUDA before forking, and each child sets its own thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVED_COMMANDS = ("train",)
# How often the server checks that its owner lives and that its socket is its own.
POLL_SECONDS = 1.0
# Largest request (argv, directory and environment as JSON).
MAX_REQUEST_BYTES = 1 << 20
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STREAMS = (0, 1, 2)
# Importing PyTorch and rbd takes ~5 s; a loaded machine may take several times that.
SERVER_START_SECONDS = 120.0
SERVER_STOP_SECONDS = 10.0


# --- client -------------------------------------------------------------------------


def run(socket_path: str, argv: list[str]) -> int:
    """Run ``rbd *argv`` in a child of the server at ``socket_path``; its exit status.
    Without a server to reach, replace this process with ``python -m rbd *argv``."""
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(socket_path)
    except OSError:
        _cold_start(argv)
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
    with conn:
        try:
            socket.send_fds(conn, [json.dumps(request).encode()], list(STREAMS))
            started = _reply(conn)
        except OSError:
            started = {}
        if "error" in started:
            print(f"rbd: warm start refused: {started['error']}", file=sys.stderr)
            return 2
        if "pid" not in started:  # the server went away before starting the training
            conn.close()
            _cold_start(argv)
        pid = started["pid"]
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, lambda signum, frame: _signal(pid, signum))
        ended = _reply(conn)
    if "exit" not in ended:
        print(
            f"rbd: the warm-start server stopped before training process {pid} ended; "
            "run the job again (it resumes from its checkpoint)",
            file=sys.stderr,
        )
        return 1
    return ended["exit"]


def _cold_start(argv: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", "rbd", *argv])


def _reply(conn: socket.socket) -> dict:
    """The server's next message, {} once it has closed the connection."""
    while True:
        try:
            data = conn.recv(MAX_REQUEST_BYTES)
        except InterruptedError:
            continue
        return json.loads(data) if data else {}


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# --- server -------------------------------------------------------------------------


def serve(socket_path: str, owner: int | None = None) -> int:
    """Fork a training per request on ``socket_path`` until the owner process is gone,
    SIGTERM arrives, or the socket at that path is no longer this server's."""
    import torch._dynamo  # noqa: F401  (imported by the first torch.optim optimiser)

    import rbd.train.loop  # noqa: F401  (everything a training imports, paid once)
    from rbd.cli import build_parser

    build_parser("train")  # imports what the parser's choices come from

    listener = _listen(socket_path)
    identity = os.stat(socket_path).st_ino
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    stopping = []
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    clients: dict[int, socket.socket] = {}
    # What a child must not keep open: the server's own descriptors (a client sees the
    # server go away only once no process holds its connection).
    servers_own = [listener, selector, wake_read, wake_write]
    try:
        while not stopping and _alive(owner) and _same_socket(socket_path, identity):
            for key, _ in selector.select(timeout=POLL_SECONDS):
                if key.fileobj is listener:
                    _accept(listener, clients, servers_own)
                else:
                    _drain(wake_read)
            _reap(clients)
    finally:
        if _same_socket(socket_path, identity):
            os.unlink(socket_path)
        listener.close()
        for conn in clients.values():
            conn.close()
    return 0


def _listen(socket_path: str) -> socket.socket:
    """A listening socket at ``socket_path`` that only this user can reach, published
    atomically (a client never meets a socket that is not yet listening)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    staging = f"{socket_path}.{os.getpid()}"
    old_umask = os.umask(0o177)
    try:
        listener.bind(staging)
    finally:
        os.umask(old_umask)
    listener.listen(16)
    os.replace(staging, socket_path)
    return listener


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_socket(socket_path: str, identity: int) -> bool:
    try:
        return os.stat(socket_path).st_ino == identity
    except FileNotFoundError:
        return False


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _accept(listener: socket.socket, clients: dict[int, socket.socket], servers_own: list) -> None:
    conn, _ = listener.accept()
    try:
        data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST_BYTES, len(STREAMS))
    except OSError:
        conn.close()
        return
    refusal = _refusal(conn, data, fds)
    if refusal:
        for fd in fds:
            os.close(fd)
        _send(conn, {"error": refusal})
        conn.close()
        return
    request = json.loads(data)
    pid = os.fork()
    if pid == 0:
        _child(conn, [*servers_own, *clients.values()], request, fds)
    for fd in fds:
        os.close(fd)
    _send(conn, {"pid": pid})
    clients[pid] = conn


def _refusal(conn: socket.socket, data: bytes, fds: list[int]) -> str | None:
    """Why a request is not served (None when it is)."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux; elsewhere the socket's mode alone
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            return f"user {uid} is not the server's user"
    if len(fds) != len(STREAMS):
        return "the request did not carry standard input, output and error"
    try:
        request = json.loads(data)
        argv = request["argv"]
        valid = isinstance(argv, list) and all(isinstance(a, str) for a in argv)
        valid = valid and isinstance(request["cwd"], str) and isinstance(request["env"], dict)
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        return "malformed request"
    if not argv or argv[0] not in SERVED_COMMANDS:
        return f"only {', '.join(SERVED_COMMANDS)} is served, not {argv[:1]}"
    return None


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:
        pass


def _reap(clients: dict[int, socket.socket]) -> None:
    """Tell each client whose training ended its exit status."""
    while clients:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = clients.pop(pid, None)
        if conn is not None:
            code = os.waitstatus_to_exitcode(status)
            _send(conn, {"exit": code if code >= 0 else 128 - code})
            conn.close()


def _child(conn: socket.socket, servers_own: list, request: dict, fds: list[int]) -> None:
    """The training, in the forked child: never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for owned in servers_own:
            if isinstance(owned, int):
                os.close(owned)
            else:
                owned.close()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in zip(STREAMS, fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        threading.Thread(target=_stop_when_client_leaves, args=(conn,), daemon=True).start()
        from rbd.cli import main

        sys.argv = ["rbd", *request["argv"]]
        code = main(request["argv"])
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
        if not isinstance(end.code, int | None):
            print(end.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _stop_when_client_leaves(conn: socket.socket) -> None:
    """SIGTERM this training once its client's end of the connection closes (the job was
    killed): a training never outlives its job."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


# --- the workflow's side ------------------------------------------------------------


def start_server(
    socket_path: str, log_path: str, timeout: float = SERVER_START_SECONDS
) -> tuple[subprocess.Popen | None, str | None]:
    """Start ``serve`` in the background, owned by this process (it exits with it), and
    wait until it listens: (the server, None), or (None, why not) within ``timeout`` s."""
    Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(socket_path).unlink(missing_ok=True)
    command = [sys.executable, "-m", "rbd.warm", "serve", "--socket", socket_path]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*command, "--owner", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return None, f"the server exited with status {server.returncode}; see {log_path}"
        if os.path.exists(socket_path):
            return server, None
        time.sleep(0.1)
    stop_server(server)
    return None, f"the server did not listen within {timeout:.0f} s; see {log_path}"


def stop_server(server: subprocess.Popen, timeout: float = SERVER_STOP_SECONDS) -> None:
    """SIGTERM the server and wait for it (SIGKILL after ``timeout`` s). Trainings it
    started go on until their jobs end."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- command line -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbd.warm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p_serve = sub.add_parser("serve", help="import once, fork a training per request")
    p_serve.add_argument("--socket", required=True, help="Unix socket path to listen on")
    p_serve.add_argument("--owner", type=int, help="exit when this process has ended")
    p_run = sub.add_parser("run", help="rbd ARGS in a child of the server, else rbd ARGS")
    p_run.add_argument("--socket", required=True, help="the server's Unix socket")
    p_run.add_argument("args", nargs=argparse.REMAINDER, help="rbd's arguments (train ...)")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        return serve(args.socket, args.owner)
    rbd_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    return run(args.socket, rbd_args)


if __name__ == "__main__":
    sys.exit(main())
