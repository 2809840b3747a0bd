"""Engine in this process, subscribers in other processes, over real tcp and ipc sockets."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from neuralflow.engine import Engine
from neuralflow.viewer.recording import Recording

from tiny_models import VOCAB, greedy, tiny

SUBSCRIBE_AND_RECORD = """
import sys
from neuralflow.viewer.recording import RecordingWriter
from neuralflow.viewer.stream import Subscriber
endpoint, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Subscriber(endpoint, hwm=0) as sub, RecordingWriter(path) as rec:
    print("ready", flush=True)
    for _ in range(count):
        frame = sub.recv(timeout=60)
        if frame is None:
            sys.exit("no frame within 60 s")
        rec.write(frame)
"""


def start_subscriber(endpoint, path, count):
    proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBE_AND_RECORD, endpoint, str(path), str(count)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def model_and_prompt():
    model = tiny("mistral", hidden_size=256, intermediate_size=256)
    return model, torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_every_frame_arrives_in_order_and_byte_identical(transport, tmp_path):
    model, ids = model_and_prompt()
    endpoint = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/frames.sock"
    new = 20
    rendered = []
    # a ring slot per frame: a loaded machine that starves the delivery thread of the GIL for a
    # few tokens would otherwise drop frames, as it should when generation must not wait
    with Engine(model, width=128, publish=endpoint, on_frame=rendered.append, slots=new + 1,
                strict=True) as engine:
        proc = start_subscriber(engine.publisher.endpoint, tmp_path / "got.nfrec", new)
        assert engine.publisher.wait_for_subscribers(1, timeout=10)
        greedy(model, ids, new)
    assert proc.wait(timeout=60) == 0
    received = list(Recording(tmp_path / "got.nfrec"))
    assert len(rendered) == len(received) == new
    for mine, theirs in zip(rendered, received):
        assert theirs.pixels.tobytes() == mine.pixels.tobytes()
        assert (theirs.seq, theirs.step, theirs.token_id, theirs.session) == \
               (mine.seq, mine.step, mine.token_id, engine.session)
        np.testing.assert_array_equal(theirs.lo, mine.lo)
    assert engine.stats["publisher"]["published"] == new


@pytest.mark.parametrize("trouble", ["SIGSTOP", "SIGKILL"])
def test_paused_or_dead_subscriber_never_blocks_generation(trouble, tmp_path):
    model, ids = model_and_prompt()
    new = 60
    greedy(model, ids, 2)  # warm up
    with Engine(model, width=128, publish="tcp://127.0.0.1:*") as engine:
        proc = start_subscriber(engine.publisher.endpoint, tmp_path / "got.nfrec", 10**6)
        assert engine.publisher.wait_for_subscribers(1, timeout=10)
        started = time.perf_counter()
        greedy(model, ids, new)  # watched by a live subscriber
        live = time.perf_counter() - started
        os.kill(proc.pid, getattr(signal, trouble))
        started = time.perf_counter()
        greedy(model, ids, new)
        troubled = time.perf_counter() - started
    proc.kill()
    proc.wait()
    stats = engine.stats
    assert stats["captured"] == 2 * new
    assert stats["delivered"] + stats["dropped"] == stats["captured"]
    publisher = stats["publisher"]
    assert publisher["published"] + publisher["socket_drops"] == stats["delivered"]
    # within noise of the same generate watched by a live subscriber (generous: this machine is
    # shared and small, and its threads contend for the GIL alike in both); a send that waited
    # for the stopped subscriber would never return
    assert troubled < live * 2 + 2.0, (troubled, live)


def test_wait_holds_the_start_until_a_viewer_has_subscribed(tmp_path, caplog):
    """A viewer started first, then the Engine with wait=: not even the prefill's frame is lost
    to the subscription still being set up."""
    model, ids = model_and_prompt()
    endpoint = f"ipc://{tmp_path}/frames.sock"
    proc = start_subscriber(endpoint, tmp_path / "got.nfrec", 8)  # connects before the bind
    try:
        with Engine(model, width=128, publish=endpoint, wait=30, strict=True):
            greedy(model, ids, 8)  # (the default ring has a slot per frame)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert [f.seq for f in Recording(tmp_path / "got.nfrec")] == list(range(8))
    started = time.monotonic()
    with Engine(model, width=128, publish="tcp://127.0.0.1:*", wait=0.3):
        pass
    assert time.monotonic() - started >= 0.3 and "no viewer subscribed" in caplog.text


def test_an_interrupted_wait_leaves_no_port_or_hook(monkeypatch):
    """Ctrl-C while attach waits for a viewer: the port is free again and the model unhooked."""
    from neuralflow.viewer.stream import Publisher
    model, _ = model_and_prompt()
    probe = Publisher("tcp://127.0.0.1:*")
    endpoint = probe.endpoint
    probe.close()

    def interrupted(self, count=1, timeout=5.0):
        raise KeyboardInterrupt

    monkeypatch.setattr(Publisher, "wait_for_subscribers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with Engine(model, width=128, publish=endpoint, wait=10):
            pass
    Publisher(endpoint).close()  # binds: the Engine let go of the port
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert not any(layer._forward_hooks for layer in model.model.layers)
    with pytest.raises(ValueError, match="publish"):
        Engine(model, wait=5)
