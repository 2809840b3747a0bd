"""Transport benchmarks: publish throughput and capture-to-subscriber latency for 128 KiB frames.

    pytest benchmarks/bench_transport.py --benchmark-enable -s

Frames are Mistral-7B sized (256 x 512 uint8, 32 layers x 4096 dims). A subscriber runs in a
separate process on loopback tcp and reports what it received. Goals (DESIGN/issue 3): at least
5,000 frames/s sustained without blocking the producer, p99 latency at most 5 ms. The numbers
are printed (use -s) and stored in the benchmark's extra_info; nothing asserts on speed, since
a shared machine's numbers are noisy. With the project's default --benchmark-disable each
benchmark still runs once and prints its numbers.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from neuralflow.viewer import wire
from neuralflow.viewer.frame import Frame
from neuralflow.viewer.stream import Publisher

# Subscriber process: receives until a frame with meta "stop", then prints one JSON line with
# the gaps and rejects, and for the frames not marked "warmup": their count, the span from the
# first to the last one received, and their capture-to-receive latencies (ns). time_ns is
# stamped by the publisher just before publish().
CHILD = r"""
import json, sys, time
from neuralflow.viewer.stream import Subscriber
with Subscriber(sys.argv[1]) as sub:
    received, latencies, first, last = 0, [], None, None
    while True:
        frame = sub.recv(timeout=10)
        now = time.time_ns()
        if frame is None or "stop" in frame.meta:
            break
        if "warmup" in frame.meta:
            continue
        received += 1
        first, last = first or now, now
        latencies.append(now - frame.time_ns)
    stats = sub.stats
print(json.dumps(dict(received=received, gaps=stats["gaps"], rejected=stats["rejected"],
                      span_s=((last or 0) - (first or 0)) / 1e9, latencies=latencies)), flush=True)
"""

FRAMES = 16  # distinct random pictures, cycled


def mistral_frames(session: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [Frame(pixels=rng.integers(0, 256, (256, 512), dtype=np.uint8), layers=32, hidden=4096,
                  session=session, meta={"token": "hello", "model": "mistral-7b"}) for _ in range(FRAMES)]


class Session:
    """A publisher on a free loopback port with one subscriber process attached."""

    def __init__(self):
        self.pub = Publisher("tcp://127.0.0.1:*")
        self.child = subprocess.Popen([sys.executable, "-c", CHILD, self.pub.endpoint],
                                      stdout=subprocess.PIPE, text=True)
        assert self.pub.wait_for_subscribers(timeout=20), "subscriber process never joined"
        self.frames = mistral_frames(wire.new_session_id())
        self.seq = 0

    def publish(self, **meta) -> tuple[bool, float]:
        """Publish the next frame stamped now; (accepted, seconds the call took)."""
        frame = self.frames[self.seq % FRAMES]
        frame = frame.replace(seq=self.seq, time_ns=time.time_ns(), meta=dict(frame.meta, **meta) if meta else frame.meta)
        start = time.perf_counter()
        accepted = self.pub.publish(frame)
        self.seq += 1
        return accepted, time.perf_counter() - start

    def paced(self, rate: float, seconds: float, **meta) -> np.ndarray:
        """Publish at `rate` frames/s for `seconds`; returns each call's duration."""
        interval, times = 1.0 / rate, []
        next_at = time.perf_counter()
        for _ in range(int(rate * seconds)):
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            times.append(self.publish(**meta)[1])
            next_at += interval
        return np.array(times)

    def finish(self) -> dict:
        """Stop the subscriber (resending the stop frame until it exits) and return its report."""
        deadline = time.monotonic() + 20
        while self.child.poll() is None and time.monotonic() < deadline:
            self.publish(stop="1")
            time.sleep(0.02)
        out = self.child.communicate(timeout=10)[0]
        self.pub.close()
        return json.loads(out.splitlines()[-1])

    def kill(self):
        if self.child.poll() is None:
            self.child.kill()
            self.child.communicate()
        self.pub.close()


@pytest.fixture
def session():
    s = Session()
    yield s
    s.kill()


def test_publish_throughput(benchmark, session):
    """Unpaced publish() calls with a subscriber attached: the producer's rate and what arrives."""
    batch = 2000
    session.paced(rate=1000, seconds=0.2, warmup="1")
    calls = []

    def publish_batch():
        for _ in range(batch):
            calls.append(session.publish())

    benchmark.pedantic(publish_batch, rounds=5, iterations=1)
    times = np.array([seconds for _, seconds in calls])
    accepted = sum(ok for ok, _ in calls)
    report = session.finish()
    info = {
        "publish_calls_per_s": round(len(times) / times.sum()),
        "publish_call_p50_us": round(float(np.percentile(times, 50)) * 1e6, 1),
        "publish_call_p99_us": round(float(np.percentile(times, 99)) * 1e6, 1),
        "accepted": f"{accepted}/{len(times)}",
        "subscriber_frames_per_s": round(report["received"] / max(report["span_s"], 1e-9)),
        "subscriber_gaps": report["gaps"],
    }
    benchmark.extra_info.update(info)
    print("\nunpaced publish, 256x512 uint8 frames, loopback tcp, 1 subscriber process:")
    for key, value in info.items():
        print(f"  {key}: {value}")
    assert report["rejected"] == 0


@pytest.mark.parametrize("rate", [1000, 5000])
def test_capture_to_subscriber_latency(benchmark, session, rate):
    """Paced publishing; time_ns stamped just before publish() vs when recv() returns in the other process."""
    session.paced(rate=1000, seconds=0.2, warmup="1")
    start = time.perf_counter()
    times = benchmark.pedantic(lambda: session.paced(rate=rate, seconds=2.0), rounds=1, iterations=1)
    wall = time.perf_counter() - start
    report = session.finish()
    latencies = np.array(report["latencies"]) / 1e6
    assert latencies.size, "subscriber received nothing"
    p50, p99 = np.percentile(latencies, [50, 99])
    info = {
        "target_rate_per_s": rate,
        "achieved_publish_rate_per_s": round(len(times) / wall),
        "delivered": f"{latencies.size}/{len(times)}",
        "gaps": report["gaps"],
        "latency_p50_ms": round(float(p50), 3),
        "latency_p99_ms": round(float(p99), 3),
        "latency_max_ms": round(float(latencies.max()), 3),
        "publish_call_p99_us": round(float(np.percentile(times, 99)) * 1e6, 1),
    }
    benchmark.extra_info.update(info)
    print(f"\ncapture-to-subscriber latency at {rate} frames/s, 256x512 uint8, loopback tcp:")
    for key, value in info.items():
        print(f"  {key}: {value}")
    print(f"  goal p99 <= 5 ms: {'met' if p99 <= 5 else 'MISSED'}")
