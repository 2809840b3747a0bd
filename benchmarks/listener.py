"""A live subscriber in its own process, so that benchmarks publish to a real viewer-like consumer.

    with Listener("tcp://127.0.0.1:5555") as listener:   # starts the process, waits until it runs
        ...                                              # engines publish to that endpoint
    print(listener.stats)     # received, gaps, skipped, ... as the Subscriber counted them

The child is `python -m neuralflow.benchmarks.listener ENDPOINT` (torch-free, like the viewer):
it receives with latest_only=True until its stdin closes, then prints its Subscriber stats as
one JSON line. `free_endpoint()` picks a free loopback port; `available()` says whether pyzmq is
installed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading


def available() -> bool:
    """Whether pyzmq is importable (a GPU box without it can still run the capture benchmarks)."""
    try:
        import zmq  # noqa: F401
    except ImportError:
        return False
    return True


def free_endpoint() -> str:
    """tcp://127.0.0.1:PORT with a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Listener:
    """Parent-side handle of the subscriber process."""

    def __init__(self, endpoint: str, timeout_s: float = 30.0):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.stats: dict = {}
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "Listener":
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "neuralflow.benchmarks.listener", self.endpoint],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()  # waits for the child's "ready"
        if line.strip() != "ready":
            self.__exit__()
            raise RuntimeError(f"subscriber process failed to start (said {line!r})")
        return self

    def __exit__(self, *exc) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            out, _ = proc.communicate(input="", timeout=self.timeout_s)  # closes stdin: stop
            lines = [x for x in out.splitlines() if x.startswith("{")]
            self.stats = json.loads(lines[-1]) if lines else {"error": "no stats"}
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.stats = {"error": "subscriber process did not stop"}


def _serve(endpoint: str) -> None:
    from neuralflow.viewer.stream import Subscriber

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with Subscriber(endpoint, latest_only=True) as sub:
        print("ready", flush=True)
        while not stop.is_set():
            sub.recv(timeout=0.05)
        stats = sub.stats
    stats.pop("sessions", None)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1])
