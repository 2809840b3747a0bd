"""ZeroMQ transport for frames: a non-blocking `Publisher` (engine side) and a `Subscriber` (viewer side).

    with Publisher("tcp://127.0.0.1:5555") as pub:      # engine process
        pub.publish(frame)                               # returns at once; drops are counted

    with Subscriber("tcp://127.0.0.1:5555", latest_only=True) as sub:   # viewer process
        frame = sub.recv(timeout=1.0)                    # None on timeout; see sub.state

Publisher: an XPUB socket (PUB plus subscription messages) with a small send high-water mark.
`publish` encodes, then sends with NOBLOCK under a lock and returns: it never waits for a
subscriber. By default ZeroMQ drops per subscriber: one whose buffers are full (paused, or a
viewer behind a thin SSH tunnel) misses frames and sees the gaps in their seq numbers, while
every other subscriber (a recorder, say) still gets every frame. With `nodrop=True` a full
subscriber makes the send fail instead: the frame is dropped for every subscriber and counted
in stats["socket_drops"] (for benchmarks that must account for each frame on the engine's
side). A background thread resends the newest frame
when a subscriber joins and every `republish_s` while idle, so a late joiner sees a picture
within about a second; resends keep their seq, and subscribers ignore repeats. Both threads
use the socket only while holding the lock (ZeroMQ sockets are not thread-safe).

Subscriber: a SUB socket on one or several endpoints. Bad messages are counted and skipped,
never raised; a peer sending a part larger than any frame is cut off. Per-session gap
counting from seq numbers makes drops visible. `state` tells "waiting" (nothing received yet)
from "live" and "silent" (the publisher went quiet).

Each object owns its ZeroMQ context unless one is passed in; close() is prompt (bounded
linger) and idempotent. Tests: `python -m pytest tests/test_stream.py`.
"""

from __future__ import annotations

import collections
import threading
import time
import warnings

import zmq

from . import wire
from .frame import Frame

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
_ALL_INTERFACES = {"*", "0.0.0.0", "::", ""}
_TICK_S = 0.05  # how often the publisher's background thread looks for joins and idleness


class PublishError(OSError):
    """The publisher cannot bind its endpoint, or was used after close()."""


class Publisher:
    """Binds `endpoint` and publishes frames without ever blocking the caller.

    endpoint     any ZeroMQ endpoint; "tcp://127.0.0.1:*" picks a free port (see .endpoint).
                 Binding all interfaces (tcp://*:..., 0.0.0.0, ::) works but warns.
    hwm          send high-water mark in messages, per subscriber (memory is bounded by
                 about hwm * frame size per subscriber, plus kernel socket buffers).
    republish_s  resend the newest frame after this long without a new one, and when a
                 subscriber joins; None disables resending.
    linger_s     how long close() may spend flushing queued frames.
    nodrop       see the module docstring: let ZeroMQ drop per subscriber, seen only as that
                 subscriber's gaps (False), or drop for all and count it here (True).
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, hwm: int = 16, republish_s: float | None = 0.5,
                 linger_s: float = 0.15, nodrop: bool = False, context: zmq.Context | None = None):
        self._republish_s = republish_s
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, max(0, int(linger_s * 1000)))
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.XPUB_NODROP, int(nodrop))
        self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every join and leave reaches us
        _warn_if_all_interfaces(endpoint)
        self._socket.setsockopt(zmq.IPV6, int(_ipv6(endpoint)))
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as e:
            self._socket.close(linger=0)
            if self._own_context:
                self._context.term()
            hint = " (is another engine or program using this port?)" if e.errno == zmq.EADDRINUSE else ""
            raise PublishError(e.errno, f"cannot publish on {endpoint}: {e.strerror}{hint}") from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)  # the bound address, port resolved
        self._lock = threading.Lock()
        self._closed = False
        self._last: list[bytes] | None = None  # newest encoded frame, for resends
        self._last_delivered = False  # whether the socket took self._last
        self._last_send = time.monotonic()
        self._join_pending = False
        self._subscribers = 0
        self._stats = dict(published=0, socket_drops=0, republished=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name="neuralflow-publisher", daemon=True)
        self._thread.start()

    def publish(self, frame: Frame) -> bool:
        """Send one frame; returns at once. True if the socket took it, False if dropped (counted).

        Safe to call from any thread. The frame's session and seq go out as they are: the
        engine numbers frames at capture so that frames it drops earlier also show as gaps.
        Subscribers ignore a frame whose seq is not newer than the last one seen from its
        session, so give each frame a new seq. If the newest frame is refused, the background
        thread retries it. Raises WireError for an unencodable frame, PublishError after close().
        """
        parts = wire.encode(frame)  # copies the pixels, outside the lock
        with self._lock:
            if self._closed:
                raise PublishError(f"publisher on {self.endpoint} is closed")
            self._last, self._last_send = parts, time.monotonic()
            self._last_delivered = self._send(parts)
            self._stats["published" if self._last_delivered else "socket_drops"] += 1
            self._join_pending = self._join_pending and not self._last_delivered
            return self._last_delivered

    @property
    def stats(self) -> dict:
        """published (publish() calls the socket took), socket_drops (publish() calls refused
        because a subscriber was full), republished (resends that went out), subscribers
        (subscriber connections now)."""
        with self._lock:
            return dict(self._stats, subscribers=self._subscribers)

    def wait_for_subscribers(self, count: int = 1, timeout: float | None = 5.0) -> bool:
        """Block until at least `count` subscriber connections have subscribed; False on timeout.

        Frames published after this returns reach those subscribers (no slow-joiner loss).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    return False
                self._read_subscriptions()
                if self._subscribers >= count:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self) -> None:
        """Stop resending, flush for at most linger_s, release the port. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._thread.join()
        self._socket.close()  # lingers at most linger_s
        if self._own_context:
            self._context.term()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, parts: list[bytes]) -> bool:
        try:
            # copy=True: one memcpy into ZeroMQ beats zero-copy's per-message bookkeeping at 128 KiB
            self._socket.send_multipart(parts, zmq.NOBLOCK, copy=True)
            return True
        except zmq.Again:  # a subscriber's queue is full (only with nodrop=True)
            return False

    def _read_subscriptions(self) -> None:
        """Drain join (b"\\x01...") and leave (b"\\x00...") messages; call with the lock held."""
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._subscribers += 1
                self._join_pending = True
            elif message[:1] == b"\x00":
                self._subscribers = max(0, self._subscribers - 1)

    def _background(self) -> None:
        """Resend the newest frame to joiners and while idle; the only other user of the socket."""
        while not self._stop.wait(_TICK_S):
            with self._lock:
                if self._closed:
                    return
                self._read_subscriptions()
                if self._last is None or self._republish_s is None:
                    self._join_pending = False  # nothing to show a joiner yet
                    continue
                idle = time.monotonic() - self._last_send >= self._republish_s
                if self._join_pending or idle or not self._last_delivered:
                    if self._send(self._last):
                        self._join_pending = False
                        self._last_delivered = True
                        self._stats["republished"] += 1
                    self._last_send = time.monotonic()


class Subscriber:
    """Receives frames from one or several publishers.

    endpoints     one endpoint or a list (several engines or ranks; sessions tell them apart).
    latest_only   recv() drains everything queued and returns only the newest frame
                  (for live display); the frames passed over are counted in stats["skipped"].
    hwm           receive high-water mark in messages (0 = unlimited).
    silent_after  seconds without any message (frames or resends) before state is "silent".

    Use a Subscriber from one thread (ZeroMQ sockets are not thread-safe).
    """

    _MAX_SESSIONS = 1024  # per-session stats kept for the most recently seen sessions

    def __init__(self, endpoints: str | list[str] = DEFAULT_ENDPOINT, *, latest_only: bool = False,
                 hwm: int = 16, silent_after: float = 2.0, context: zmq.Context | None = None):
        self.latest_only = latest_only
        self.silent_after = silent_after
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        # a part bigger than any frame's pixels: ZeroMQ cuts that peer off for good (no
        # reconnect after a protocol error) before reading it, rather than hold it whole
        self._socket.setsockopt(zmq.MAXMSGSIZE, wire.MAX_PART)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._closed = False
        self._last_message: float | None = None  # monotonic time of the last valid message
        self._sessions: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._stats = dict(received=0, gaps=0, rejected=0, repeats=0, skipped=0)
        self.last_error: str | None = None  # why the latest rejected message was rejected
        try:
            for endpoint in [endpoints] if isinstance(endpoints, str) else endpoints:
                self.connect(endpoint)
        except BaseException:
            self.close()  # no socket or context left behind by a bad endpoint
            raise

    def connect(self, endpoint: str) -> None:
        """Also listen to `endpoint` (connecting never fails for a publisher that is not up yet)."""
        try:
            if _ipv6(endpoint):  # (off by default in ZeroMQ; on for all later connects too)
                self._socket.setsockopt(zmq.IPV6, 1)
            self._socket.connect(endpoint)
        except zmq.ZMQError as e:
            raise ValueError(f"cannot connect to {endpoint}: {e.strerror}") from None

    def recv(self, timeout: float | None = None) -> Frame | None:
        """The next new frame (the newest one if latest_only), or None after `timeout` seconds.

        timeout=None waits indefinitely. Rejected messages and repeats (resends of the last
        frame seen from a session) are counted and skipped. Pixels are read-only views.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if self._socket.poll(wait_ms, zmq.POLLIN):
                frame = self._take()
                if frame is not None:
                    return self._drain_newer(frame) if self.latest_only else frame
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def pending(self) -> bool:
        """Whether a message is queued (a frame, or a repeat or bad message that recv skips)."""
        return bool(self._socket.poll(0, zmq.POLLIN))

    @property
    def state(self) -> str:
        """"waiting" (nothing ever received), "live", or "silent" (nothing for silent_after s).

        Based on the messages recv() has processed; resends keep an idle publisher "live".
        """
        if self._last_message is None:
            return "waiting"
        return "live" if time.monotonic() - self._last_message < self.silent_after else "silent"

    @property
    def stats(self) -> dict:
        """received (new frames), gaps (frames missing from seq numbers), rejected (bad
        messages), repeats (resends and stale frames ignored), skipped (passed over by
        latest_only), sessions ({session: {received, gaps, last_seq}})."""
        return dict(self._stats, sessions={s: dict(v) for s, v in self._sessions.items()})

    def close(self) -> None:
        """Close at once (linger 0). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take(self) -> Frame | None:
        """Receive one queued message; the frame if it is valid and new, else None (counted)."""
        try:
            parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        try:
            frame = wire.decode(parts)
        except wire.WireError as e:
            self._stats["rejected"] += 1
            self.last_error = str(e)
            return None
        self._last_message = time.monotonic()
        session = self._sessions.pop(frame.session, None)
        if session is None:
            session = dict(received=0, gaps=0, last_seq=None)
            if len(self._sessions) >= self._MAX_SESSIONS:
                self._sessions.popitem(last=False)
        self._sessions[frame.session] = session  # most recent last
        last = session["last_seq"]
        if last is not None and frame.seq <= last:
            self._stats["repeats"] += 1
            return None
        if last is not None and frame.seq > last + 1:
            session["gaps"] += frame.seq - last - 1
            self._stats["gaps"] += frame.seq - last - 1
        session["last_seq"] = frame.seq
        session["received"] += 1
        self._stats["received"] += 1
        return frame

    def _drain_newer(self, frame: Frame) -> Frame:
        while self._socket.poll(0, zmq.POLLIN):
            newer = self._take()
            if newer is not None:
                self._stats["skipped"] += 1
                frame = newer
        return frame


def _tcp_host(endpoint: str) -> str | None:
    """The host of a tcp:// endpoint, IPv6 brackets taken off ("::1" for tcp://[::1]:5555)."""
    if not endpoint.startswith("tcp://"):
        return None
    return endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")


def _ipv6(endpoint: str) -> bool:
    """An IPv6 address (tcp://[::1]:5555): ZeroMQ takes those only with its IPV6 option on."""
    return ":" in (_tcp_host(endpoint) or "")


def _warn_if_all_interfaces(endpoint: str) -> None:
    if _tcp_host(endpoint) in _ALL_INTERFACES:
        warnings.warn(
            f"neuralflow publisher binds {endpoint} on all network interfaces: anyone who can reach "
            f"this machine can watch the frames. Bind tcp://127.0.0.1:<port> to keep them local.",
            RuntimeWarning, stacklevel=3)
