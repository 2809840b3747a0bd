"""The `neuralflow` command as a user runs it: real subprocesses, real sockets, CPU only.

demo (headless, --quick), generate on a checkpoint saved here with an offline tokenizer, record
then export/replay, a recording cut mid-write, the attention fallback, and every user mistake
the CLI promises to answer with one line and exit 2. Run: `python -m pytest tests/test_cli.py`.
"""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from neuralflow.viewer.frame import Frame
from neuralflow.viewer.playback import ReplaySource, open_recording
from neuralflow.viewer.recording import Recording, RecordingWriter
from neuralflow.viewer.stream import Publisher, Subscriber

pytestmark = pytest.mark.timeout(240)
CLI = [sys.executable, "-m", "neuralflow.viewer.cli"]


def run(args, *, display=False, timeout=200, **kwargs):
    env = dict(os.environ)
    if not display:
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, **kwargs)


def user_error(result, *words):
    """Exit 2, one line on stderr starting 'neuralflow', mentioning `words`, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuralflow"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def frames(n, start=0, session=5):
    rng = np.random.default_rng(start)
    return [Frame(pixels=rng.integers(0, 256, (12, 32), dtype=np.uint8), layers=3, hidden=128, step=k,
                  seq=k, session=session, token_id=k, time_ns=1_000_000_000 + k * 10_000_000,
                  meta={"token": f"t{k}"}) for k in range(start, start + n)]


def fed(endpoint, args, sent):
    """Run the CLI with `args` while publishing `sent` on `endpoint` every 20 ms, until it exits
    (it joins late and stops on its own); (process, its stderr)."""
    with Publisher(endpoint, republish_s=None) as pub:
        process = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for frame in sent:
            if process.poll() is not None:
                break
            pub.publish(frame)
            time.sleep(0.02)
        _, err = process.communicate(timeout=30)
    return process, err


def test_kill_ends_a_headless_view_as_ctrl_c_does(tmp_path):
    """SIGTERM (kill, a job scheduler) stops `view --headless` with its animation written."""
    endpoint, out = free_endpoint(), tmp_path / "killed"
    with Publisher(endpoint, republish_s=None) as pub:
        process = subprocess.Popen([*CLI, "view", "--headless", "--connect", endpoint, "--out", str(out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for frame in frames(3000):  # up to a minute for a loaded machine to start the viewer
            pub.publish(frame)
            time.sleep(0.02)
            if len(list(out.glob("frame_*.png"))) >= 3:
                break
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert gif_frames(out / "animation.gif") == len(list(out.glob("frame_*.png"))) >= 3


def gif_frames(path) -> int:
    with Image.open(path) as image:
        return image.n_frames


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Mistral and the demo's byte tokenizer, saved as a user's model folder."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from neuralflow.engine.demo import byte_tokenizer

    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = MistralForCausalLM(config)
    model.generation_config.eos_token_id = None  # never stop early: one frame per requested token
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- demo --------------------------------------------------------------------------------------

def test_demo_without_display_writes_pngs_gif_and_recording(tmp_path):
    out = tmp_path / "demo"
    started = time.monotonic()
    result = run(["demo", "--quick", "--out", str(out)])  # no DISPLAY: falls back to headless
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "no display" in result.stderr and "wrote 24 PNGs" in result.stderr
    assert "Alice was " in result.stdout  # the generated text streamed to the terminal
    pngs = sorted(out.glob("frame_*.png"))
    assert len(pngs) == 24
    for png in pngs:
        with Image.open(png) as image:
            assert image.size == (32 * 8, 32 * 8)  # 4 layers x 256 dims at width 32, zoom 8
    assert gif_frames(out / "demo.gif") == 24
    recording = Recording(out / "demo.nfrec")
    assert len(recording) == 24 and not recording.truncated
    first = recording[0]
    assert (first.layers, first.hidden, first.width, first.height) == (4, 256, 32, 32)
    assert [f.step for f in recording] == list(range(24))
    assert first.meta["token"] == " "  # the prefill's last input token: the prompt "Alice was "
    print(f"demo --quick: {time.monotonic() - started:.1f} s")



def test_demo_train_without_display_writes_gifs_and_a_recording(tmp_path):
    out = tmp_path / "train"
    result = run(["demo", "--train", "--quick", "--out", str(out)])  # 12 steps, a probe every 4
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "jump at layer 4" in result.stderr
    assert "neuralflow view --replay" in result.stderr
    assert gif_frames(out / "alice_plain.gif") == gif_frames(out / "alice_diff.gif") == 4
    recording = Recording(out / "alice.nfrec")
    assert [f.step for f in recording] == [0, 4, 8, 12] and not recording.truncated
    assert recording[0].layers == 12 and recording[0].meta["probe"] == "alice"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []  # nothing of the Trainer's left


def test_demo_train_refuses_flags_it_would_ignore():
    user_error(run(["demo", "--train", "--tokens", "5", "--save", "x"]), "--tokens", "--save", "--train")

# ---- generate ----------------------------------------------------------------------------------

def test_generate_streams_one_frame_per_forward(checkpoint):
    endpoint, new_tokens = free_endpoint(), 12
    received, done = [], threading.Event()
    with Subscriber(endpoint, hwm=0) as sub:
        def listen():
            while not done.is_set():
                frame = sub.recv(timeout=0.05)
                if frame is not None:
                    received.append(frame)

        thread = threading.Thread(target=listen)
        thread.start()
        try:
            result = run(["generate", "--model", str(checkpoint), "--prompt", "Alice", "--max-new-tokens",
                          str(new_tokens), "--publish", endpoint, "--wait-viewer", "30",
                          "--attn", "flash_attention_2"])  # the width by default: 16 for 3 x 64
            time.sleep(0.5)  # frames still in flight on the socket
        finally:
            done.set()
            thread.join()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "sdpa, not flash_attention_2" in result.stderr  # no flash-attn on the CPU machine
    assert result.stdout.startswith("Alice")  # tokens streamed to the terminal
    assert f"{new_tokens} new tokens" in result.stderr and f"{new_tokens} frames captured" in result.stderr
    assert [f.step for f in received] == list(range(new_tokens))  # prefill + each new token's forward
    assert [f.seq for f in received] == list(range(new_tokens))
    assert len({f.session for f in received}) == 1
    for frame in received:
        assert (frame.layers, frame.hidden, frame.width, frame.height) == (3, 64, 16, 12)
        assert frame.meta["label"] == checkpoint.name
    assert received[0].meta["token"] == "e" and received[0].position == 4  # last prompt byte


def test_generate_with_the_prompts_own_scale(checkpoint):
    """--norm prompt: one forward of the prompt sets a fixed scale per layer (lo 0, hi the 99th
    percentile of |x|), so the frames are norm "reference" frames with that range, and show
    structure: many levels, few at either end."""
    endpoint = free_endpoint()
    received = []
    with Subscriber(endpoint) as sub:
        process = subprocess.Popen([*CLI, "generate", "--model", str(checkpoint), "--prompt", "Alice was",
                                    "--max-new-tokens", "4", "--publish", endpoint, "--wait-viewer", "30",
                                    "--norm", "prompt"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=dict(os.environ, DISPLAY=""))
        while process.poll() is None or len(received) < 4:
            frame = sub.recv(timeout=0.2)
            if frame is not None:
                received.append(frame)
            elif process.poll() is not None:
                break
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "picture scale from the prompt" in err and len(received) == 4
    for frame in received:
        assert frame.norm == "reference" and not frame.lo.any() and (frame.hi > 0).all()
        assert np.array_equal(frame.hi, received[0].hi)  # fixed
        values = frame.pixels[:, :frame.width]
        assert len(np.unique(values)) > 30 and np.mean(values == 255) < 0.1


def test_pick_attention_falls_back_to_sdpa(monkeypatch):
    from neuralflow.engine import generate

    monkeypatch.setattr(generate, "flash_attn_available", lambda: False)
    impl, line = generate.pick_attention("flash_attention_2", "cuda")
    assert impl == "sdpa" and "flash-attn is not installed" in line
    assert generate.pick_attention(None, "cuda")[0] == "sdpa"
    assert generate.pick_attention("eager", "cuda")[0] == "eager"
    monkeypatch.setattr(generate, "flash_attn_available", lambda: True)
    assert generate.pick_attention(None, "cuda", "float16")[0] == "flash_attention_2"
    assert generate.pick_attention("flash_attention_2", "cuda:1", "bfloat16")[0] == "flash_attention_2"
    impl, line = generate.pick_attention("flash_attention_2", "cpu")
    assert impl == "sdpa" and "CUDA" in line
    assert generate.pick_attention(None, "cuda", "float32")[0] == "sdpa"


def test_pick_attention_follows_what_the_model_class_supports(monkeypatch):
    from transformers import BloomConfig, BloomForCausalLM, GPT2Config, MistralForCausalLM

    from neuralflow.engine import generate

    monkeypatch.setattr(generate, "flash_attn_available", lambda: True)
    assert generate.pick_attention(None, "cuda", "bfloat16", MistralForCausalLM)[0] == "flash_attention_2"
    impl, line = generate.pick_attention(None, "cuda", "bfloat16", BloomForCausalLM)
    assert impl == "eager" and "BloomForCausalLM does not support flash-attn" in line and "sdpa" in line
    assert generate.pick_attention(None, "cpu", "auto", BloomForCausalLM)[0] == "eager"
    # --dtype auto: the dtype the checkpoint was saved in decides; flash-attn only when it is known
    assert generate._weights_dtype(BloomConfig(dtype="bfloat16"), "auto") == "bfloat16"
    assert generate._weights_dtype(GPT2Config(), "auto") == "auto"
    assert generate._weights_dtype(GPT2Config(), "float16") == "float16"
    impl, line = generate.pick_attention(None, "cuda", "auto", MistralForCausalLM)
    assert impl == "sdpa" and "does not say its dtype" in line


def test_generate_into_a_closed_pipe(checkpoint):
    """`neuralflow generate ... | head -1`: the reader goes away, generate stops quietly."""
    process = subprocess.Popen([*CLI, "generate", "--model", str(checkpoint), "--prompt", "Alice",
                                "--max-new-tokens", "40", "--no-publish", "--width", "32"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141, err
    assert "Traceback" not in err


def test_generate_with_device_map(checkpoint):
    result = run(["generate", "--model", str(checkpoint), "--prompt", "Alice", "--max-new-tokens", "2",
                  "--device-map", "auto", "--no-publish", "--width", "32"])
    assert result.returncode == 0, result.stderr
    assert "2 frames captured" in result.stderr


def test_generate_a_model_without_sdpa(tmp_path):
    """Bloom has neither flash-attn nor sdpa: the default attention must still load it."""
    from neuralflow.engine.demo import byte_tokenizer
    from tiny_models import tiny

    tiny("bloom", vocab_size=len(byte_tokenizer())).save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    result = run(["generate", "--model", str(tmp_path), "--prompt", "Alice", "--max-new-tokens", "2",
                  "--no-publish", "--width", "32"])
    assert result.returncode == 0, result.stderr
    assert "attention: eager" in result.stderr and "2 frames captured" in result.stderr


# ---- user mistakes -----------------------------------------------------------------------------

def test_missing_model_folder(tmp_path):
    user_error(run(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]), "no such model folder")
    user_error(run(["generate", "--model", "someone/some-model", "--prompt", "x"]), "huggingface-cli download")


def test_folder_without_config(tmp_path):
    user_error(run(["generate", "--model", str(tmp_path), "--prompt", "x"]), "no config.json")


def test_folder_that_is_not_a_causal_lm(tmp_path):
    from transformers import DistilBertConfig

    DistilBertConfig().save_pretrained(tmp_path)
    user_error(run(["generate", "--model", str(tmp_path), "--prompt", "x", "--no-publish"]),
               "not a causal language model")


def test_busy_port(checkpoint):
    with Publisher("tcp://127.0.0.1:*") as taken:
        user_error(run(["generate", "--model", str(checkpoint), "--prompt", "x", "--publish", taken.endpoint]),
                   taken.endpoint, "--publish")
        user_error(run(["demo", "--quick", "--publish", taken.endpoint]), taken.endpoint)


def test_no_display_for_view():
    user_error(run(["view"]), "no display", "--headless")


@pytest.mark.parametrize("args", [
    ["generate", "--model", ".", "--prompt", "x", "--max-new-tokens", "many"],
    ["generate", "--prompt", "x"],
    ["demo", "--steps", "-3"],
    ["view", "--palette", "rainbow"],
    ["generate", "--model", ".", "--prompt", "x", "--dtype", "float8"],
    ["frobnicate"],
    [],
])
def test_bad_flags(args):
    user_error(run(args))


def test_an_unknown_flag_points_at_its_commands_help():
    user_error(run(["demo", "--bogus"]), "--bogus", "neuralflow demo --help")


def test_an_empty_prompt_is_refused_before_anything_loads():
    user_error(run(["generate", "--model", ".", "--prompt", ""]), "--prompt is empty")
    user_error(run(["demo", "--quick", "--prompt", ""]), "--prompt is empty")


def test_not_a_recording(tmp_path):
    bogus = tmp_path / "notes.nfrec"
    bogus.write_text("hello, not frames\n")
    user_error(run(["export", str(bogus), "--gif", str(tmp_path / "x.gif")]), "not a neuralflow recording")
    user_error(run(["view", "--replay", str(bogus)]), "not a neuralflow recording")
    user_error(run(["view", "--replay", str(tmp_path / "missing.nfrec"), "--headless"]), "no such recording")
    user_error(run(["record", "--out", str(bogus), "--count", "1"]), "not a neuralflow recording")
    user_error(run(["export", str(bogus)]), "--gif")


def test_only_path_errors_become_one_line(monkeypatch, capsys, tmp_path):
    from neuralflow.viewer import cli, playback

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")  # no path: not the user's to fix by a flag

    recording = tmp_path / "r.nfrec"
    RecordingWriter(recording).close()
    monkeypatch.setattr(playback, "export", broken)
    with pytest.raises(OSError, match="Input/output"):
        cli.main(["export", str(recording), "--gif", str(tmp_path / "x.gif")])

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(playback, "export", full_disk)
    assert cli.main(["export", str(recording), "--gif", str(tmp_path / "x.gif")]) == 2
    assert capsys.readouterr().err.strip() == "neuralflow: error: No space left on device"

    def missing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "gone"))

    monkeypatch.setattr(playback, "export", missing)
    assert cli.main(["export", str(recording), "--gif", str(tmp_path / "x.gif")]) == 2
    assert capsys.readouterr().err.strip() == f"neuralflow: error: No such file or directory: {tmp_path / 'gone'}"


def test_paths_that_cannot_be_written(tmp_path):
    """A file where a folder must go: one line naming the path, not a traceback."""
    recording = tmp_path / "run.nfrec"
    with RecordingWriter(tmp_path / "new" / "deeper" / "run.nfrec") as writer:  # folders made
        writer.write(frames(1)[0])
    (tmp_path / "new" / "deeper" / "run.nfrec").replace(recording)
    for args in (["export", str(recording), "--png-dir", str(recording)],
                 ["record", "--out", str(recording / "x.nfrec"), "--count", "1"]):
        user_error(run(args), str(recording))


def test_cli_imports_without_torch():
    block = "import sys; sys.modules['torch'] = None; from neuralflow.viewer.cli import main; sys.exit(main(%r))"
    no_torch = lambda argv: subprocess.run([sys.executable, "-c", block % (argv,)], capture_output=True, text=True,
                                           timeout=60)
    user_error(no_torch(["demo", "--quick"]), "needs torch")
    user_error(no_torch(["generate", "--model", "/nope", "--prompt", "x"]), "no such model folder")
    assert no_torch(["--help"]).returncode == 0


# ---- recordings --------------------------------------------------------------------------------

def test_record_then_export_and_replay(tmp_path):
    endpoint, path = free_endpoint(), tmp_path / "run.nfrec"
    sent = frames(400)
    recorder, err = fed(endpoint, ["record", "--connect", endpoint, "--out", str(path), "--count", "10"], sent)
    assert recorder.returncode == 0, err
    assert "wrote 10 frames" in err
    recording = Recording(path)
    assert len(recording) == 10 and not recording.truncated
    seqs = [f.seq for f in recording]
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    np.testing.assert_array_equal(recording[3].pixels, sent[seqs[3]].pixels)
    more = tmp_path / "more.nfrec"  # recording into an existing file says it appended
    shutil.copy(path, more)
    recorder, err = fed(endpoint, ["record", "--connect", endpoint, "--out", str(more), "--count", "5"], sent)
    assert recorder.returncode == 0 and "appended 5 frames" in err and "now holds 15" in err
    assert len(Recording(more)) == 15

    result = run(["export", str(path), "--gif", str(tmp_path / "run.gif"), "--png-dir", str(tmp_path / "pngs"),
                  "--zoom", "2", "--palette", "viridis"])
    assert result.returncode == 0, result.stderr
    assert gif_frames(tmp_path / "run.gif") == 10
    pngs = sorted((tmp_path / "pngs").glob("*.png"))
    assert len(pngs) == 10 and Image.open(pngs[0]).size == (64, 24)

    result = run(["view", "--replay", str(path), "--headless", "--out", str(tmp_path / "replay")])
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "replay").glob("frame_*.png"))) == 10
    assert gif_frames(tmp_path / "replay" / "replay.gif") == 10


def test_headless_view_and_record_stop_by_count_and_duration(tmp_path):
    endpoint = free_endpoint()
    viewer, err = fed(endpoint, ["view", "--headless", "--connect", endpoint, "--count", "4", "--out",
                                 str(tmp_path / "live")], frames(600))
    assert viewer.returncode == 0, err
    assert f"waiting for frames on {endpoint}" in err  # said at once, not only at the end
    assert len(list((tmp_path / "live").glob("frame_*.png"))) == 4
    started = time.monotonic()  # nobody publishing: --duration ends it with an empty recording
    result = run(["record", "--connect", free_endpoint(), "--out", str(tmp_path / "quiet.nfrec"),
                  "--duration", "0.5"])
    assert result.returncode == 0, result.stderr
    assert 0.5 <= time.monotonic() - started < 30 and "wrote 0 frames" in result.stderr
    assert len(Recording(tmp_path / "quiet.nfrec")) == 0


def test_export_with_the_guide(tmp_path):
    path = tmp_path / "g.nfrec"
    with RecordingWriter(path) as writer:
        for frame in frames(2):
            writer.write(frame)
    result = run(["export", str(path), "--png-dir", str(tmp_path / "plain")])
    assert result.returncode == 0, result.stderr
    result = run(["export", str(path), "--png-dir", str(tmp_path / "guided"), "--guide"])
    assert result.returncode == 0, result.stderr
    plain = Image.open(sorted((tmp_path / "plain").glob("*.png"))[0])
    guided = Image.open(sorted((tmp_path / "guided").glob("*.png"))[0])
    assert plain.size == (256, 96)  # 32 x 12 zoomed by default to at least 256 px wide
    assert guided.size[0] > plain.size[0] and guided.size[1] >= plain.size[1]  # the guide beside it
    # the picture itself is unchanged somewhere inside the guided one
    big, small = np.asarray(guided.convert("RGB")), np.asarray(plain.convert("RGB"))
    assert any(np.array_equal(big[y:y + 96, x:x + 256], small)
               for y in range(big.shape[0] - 95) for x in range(big.shape[1] - 255))


def test_truncated_recording_replays_up_to_the_cut(tmp_path):
    path = tmp_path / "cut.nfrec"
    with RecordingWriter(path) as writer:
        for frame in frames(10):
            writer.write(frame)
    with open(path, "r+b") as f:  # a crash mid-write: the last record loses its tail
        f.truncate(os.path.getsize(path) - 100)
    result = run(["export", str(path), "--gif", str(tmp_path / "cut.gif")])
    assert result.returncode == 0, result.stderr
    assert "9 frames" in result.stderr and "cut off after its last whole frame" in result.stderr
    assert gif_frames(tmp_path / "cut.gif") == 9
    result = run(["view", "--replay", str(path), "--headless", "--out", str(tmp_path / "replay")])
    assert result.returncode == 0 and "cut off" in result.stderr
    assert len(list((tmp_path / "replay").glob("frame_*.png"))) == 9
    result = run(["view", "--replay", str(path), "--headless", "--count", "4", "--fps", "2", "--out",
                  str(tmp_path / "first4")])
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "first4").glob("frame_*.png"))) == 4
    with Image.open(tmp_path / "first4" / "replay.gif") as gif:
        assert gif.n_frames == 4 and gif.info["duration"] == 500

    source = ReplaySource(open_recording(path), fps=1000)
    got = []
    while source.state == "replay":
        frame = source.recv(timeout=0.1)
        if frame is not None:
            got.append(frame.step)
    assert got == list(range(9)) and source.recv(timeout=0) is None and source.state == "end"


def test_replay_loop_starts_over(tmp_path):
    path = tmp_path / "loop.nfrec"
    with RecordingWriter(path) as writer:
        for frame in frames(3):
            writer.write(frame)
    source = ReplaySource(open_recording(path), fps=1000, loop=True)
    got = []
    while len(got) < 8:
        frame = source.recv(timeout=0.5)
        assert frame is not None and source.state == "replay"
        got.append(frame.step)
    assert got == [0, 1, 2, 0, 1, 2, 0, 1]


def test_replay_loop_holds_the_last_frame_and_waits_when_asked(tmp_path):
    """Starting over, the last frame stays up for the recording's mean gap (1/15 s for a single
    frame), not for no time at all; recv(None) waits for the next frame instead of giving up."""
    one, three = tmp_path / "one.nfrec", tmp_path / "three.nfrec"
    with RecordingWriter(one) as writer:
        writer.write(frames(1)[0])
    with RecordingWriter(three) as writer:
        for frame in frames(3):  # 10 ms apart
            writer.write(frame)
    source = ReplaySource(open_recording(one), loop=True)
    started, shown = time.monotonic(), 0
    while time.monotonic() - started < 0.5:
        shown += source.recv(timeout=0.01) is not None
    assert 4 <= shown <= 9  # 15 a second, not thousands
    source = ReplaySource(open_recording(three), loop=True)
    started = time.monotonic()
    steps = [source.recv(timeout=None).step for _ in range(7)]
    assert steps == [0, 1, 2, 0, 1, 2, 0] and time.monotonic() - started >= 0.055


def test_export_zooms_tall_frames_no_taller_than_a_gif_holds(tmp_path):
    path = tmp_path / "tall.nfrec"
    with RecordingWriter(path) as writer:  # Mistral 7B at width 16: 8192 rows
        writer.write(Frame(pixels=np.zeros((8192, 16), np.uint8), layers=32, hidden=4096))
    result = run(["export", str(path), "--gif", str(tmp_path / "tall.gif")])
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "tall.gif") as gif:
        assert gif.size[0] == 16  # zoom 1: 16 x 8192 already


def test_damaged_records_and_bad_numbers_are_one_line(tmp_path):
    path = tmp_path / "damaged.nfrec"
    with RecordingWriter(path) as writer:
        for frame in frames(3):
            writer.write(frame)

    def damage(index):
        offset, length, _ = Recording(path).offsets[index]
        data = bytearray(path.read_bytes())
        data[offset + length - 5] ^= 0xFF
        path.write_bytes(bytes(data))

    damage(0)  # the first record: the other two export, and the summary says one was skipped
    result = run(["export", str(path), "--gif", str(tmp_path / "x.gif")])
    assert result.returncode == 0 and "2 frames" in result.stderr
    assert "skipped 1 damaged record" in result.stderr and gif_frames(tmp_path / "x.gif") == 2
    damage(1)
    damage(2)
    user_error(run(["export", str(path), "--gif", str(tmp_path / "x.gif")]), "no readable frame")
    user_error(run(["export", str(path), "--png-dir", str(tmp_path / "p")]), "no readable frame")
    for flags in (["export", str(path), "--gif", str(tmp_path / "x.gif"), "--fps", "nan"],
                  ["record", "--out", str(tmp_path / "r.nfrec"), "--duration", "nan"],
                  ["view", "--replay", str(path), "--headless", "--fps", "inf"]):
        user_error(run(flags), "positive number")


def test_flags_that_cannot_apply_are_one_line(tmp_path):
    path = tmp_path / "run.nfrec"
    with RecordingWriter(path) as writer:
        writer.write(Frame(pixels=np.zeros((4, 64), np.uint8), layers=4, hidden=64))
    user_error(run(["export", str(path), "--gif", str(tmp_path / "x.gif"), "--zoom", "1100"]),
               "at most 65535 a side (zoom 1023 or less)")
    user_error(run(["view", "--replay", str(path), "--headless", "--duration", "1"]), "--duration stops a live view")
    user_error(run(["view", "--connect", "tcp://127.0.0.1:1", "--count", "3"]), "stop a --headless view")
    user_error(run(["demo", "--train", "--seed", "-1"]), "0 to 2**32 - 1")
    user_error(run(["view", "--replay", str(path), "--headless", "--loop"]), "--loop replays in the window")
    assert run(["export", str(path), "--gif", str(tmp_path / "slow.gif"), "--fps", "1e-300"]).returncode == 0
    with Image.open(tmp_path / "slow.gif") as gif:
        assert gif.info["duration"] == 655350  # GIF's longest delay, not a crash


def test_endpoints_default_to_loopback():
    from neuralflow.viewer.cli import _endpoints, build_parser
    from neuralflow.viewer.stream import DEFAULT_ENDPOINT

    assert DEFAULT_ENDPOINT.startswith("tcp://127.0.0.1:")
    parse = build_parser().parse_args
    assert parse(["generate", "--model", ".", "--prompt", "x"]).publish == DEFAULT_ENDPOINT
    assert parse(["demo"]).publish is None  # the demo publishes only when asked
    for command in (["view"], ["record", "--out", "x.nfrec"]):
        assert _endpoints(parse(command)) == [DEFAULT_ENDPOINT]


def test_replay_keeps_the_recorded_pace(tmp_path):
    path = tmp_path / "paced.nfrec"
    with RecordingWriter(path) as writer:
        for frame in frames(6):  # recorded 10 ms apart
            writer.write(frame)
    source = ReplaySource(open_recording(path))
    started, times = time.monotonic(), []
    while len(times) < 6:
        if source.recv(timeout=0.5) is not None:
            times.append(time.monotonic() - started)
    assert 0.04 <= times[-1] < 0.5


def test_replay_in_the_window(tmp_path):
    assert shutil.which("Xvfb"), "the window tests need Xvfb (apt-get install xvfb xdotool)"
    path = tmp_path / "win.nfrec"
    with RecordingWriter(path) as writer:
        for frame in frames(20):
            writer.write(frame)
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        display = ":" + pipe.readline().strip()
    try:
        env = dict(os.environ, DISPLAY=display)
        viewer = subprocess.Popen([*CLI, "view", "--replay", str(path), "--fps", "50"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            first = viewer.stderr.readline()
            assert "first frame: 12x32 px, 3 layers x 128 dims" in first, first
        finally:
            viewer.terminate()
            viewer.wait(10)
    finally:
        xvfb.terminate()
        xvfb.wait(10)


@pytest.mark.parametrize("temperature", ["-1", "nan"])
def test_a_temperature_that_is_no_temperature_is_refused(tmp_path, temperature):
    # the parser takes any float; these once ran greedy without a word. Refused before the
    # weights load, so a folder with a config.json is enough
    (tmp_path / "config.json").write_text("{}")
    user_error(run(["generate", "--model", str(tmp_path), "--prompt", "x", "--no-publish",
                    "--temperature", temperature]), "--temperature")


def test_warnings_are_one_line(tmp_path):
    """Binding all interfaces warns; the command line shows the message, not a source line."""
    (tmp_path / "config.json").write_text("{}")
    port = free_endpoint().rsplit(":", 1)[1]
    result = run(["generate", "--model", str(tmp_path), "--prompt", "x", "--publish", f"tcp://*:{port}",
                  "--temperature", "-1"])
    warned = [line for line in result.stderr.splitlines() if "all network interfaces" in line]
    assert len(warned) == 1 and warned[0].startswith("neuralflow: warning: neuralflow publisher binds")
    assert "cli.py" not in result.stderr and "return Publisher" not in result.stderr
