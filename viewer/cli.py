"""The `neuralflow` command: demo, generate, view, record, export, bench.

    neuralflow demo                                   # train a tiny model, watch it write
    neuralflow generate --model DIR --prompt "..."    # any local HF causal LM, frames on :5555
    neuralflow view [--connect EP] [--replay FILE] [--headless --out DIR]
    neuralflow record --out run.nfrec [--count N] [--duration S]
    neuralflow export run.nfrec --gif run.gif [--png-dir DIR]
    neuralflow bench [--quick]
Also `python -m neuralflow.viewer.cli ...`. `neuralflow COMMAND --help` for the flags.

This module imports without torch; demo, generate and bench import the engine only when they
run, and say so in one line if torch is missing. Policy: a mistake the user can fix (bad flag,
missing folder, busy port, no display, a file that is not a recording) prints one line
"neuralflow: error: ..." and exits 2, never a traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from .palette import PALETTES
from .recording import RecordingError
from .stream import DEFAULT_ENDPOINT, PublishError

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its message as one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- helpers -------------------------------------------------------------------------------

def _need_engine(command: str) -> None:
    """UserError unless torch and transformers import (the engine side of neuralflow)."""
    for module in ("torch", "transformers"):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"`neuralflow {command}` needs {module}: pip install 'neuralflow[engine]' "
                            f"(install torch first, see README)") from None


def _check_display() -> None:
    """UserError unless a Tk window can open here."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UserError("no display (DISPLAY is not set): use --headless to write PNGs and a GIF instead")
    try:
        import tkinter  # noqa: F401
    except ImportError:
        raise UserError("tkinter is not installed, so no window: use --headless, or install python3-tk") from None


def _open_window(source, args, where: str) -> None:
    """Run the viewer window on a frame source until it is closed."""
    import tkinter

    from .window import ViewerWindow

    try:
        root = tkinter.Tk()
    except tkinter.TclError as err:
        raise UserError(f"cannot open a window ({err}): use --headless") from None
    if args.geometry:
        try:
            root.geometry(args.geometry)
        except tkinter.TclError as err:
            root.destroy()
            raise UserError(f"--geometry {args.geometry}: {err} (e.g. 1500x700+0+0)") from None
    ViewerWindow(root, source, palette=args.palette, history=args.history, out_dir=args.out or ".",
                 record_fps=args.fps or 15.0, record_format="apng" if args.apng else "gif", where=where)
    root.mainloop()


def _endpoints(args) -> list[str]:
    """The --connect endpoints (default the standard one), each checked by connecting once."""
    from .stream import Subscriber

    endpoints = args.connect or [DEFAULT_ENDPOINT]
    for endpoint in endpoints:
        try:
            Subscriber(endpoint).close()
        except ValueError as err:
            raise UserError(f"{err} (an endpoint looks like tcp://127.0.0.1:5555)") from None
    return endpoints


def _publisher(endpoint: str | None):
    """Bind the publisher before anything slow, so a busy port fails in a second."""
    if not endpoint:
        return None
    import zmq

    from .stream import Publisher

    try:
        return Publisher(endpoint)
    except PublishError as err:
        hint = ("pick another port, e.g. --publish tcp://127.0.0.1:5556" if err.errno == zmq.EADDRINUSE
                else "an endpoint to publish on looks like tcp://127.0.0.1:5555")
        raise UserError(f"{err.strerror}; {hint}") from None


@contextlib.contextmanager
def _kill_as_ctrl_c():
    """SIGTERM (kill, a job scheduler) ends a headless recording as Ctrl-C does, so what was
    received is written. (Not for windows: Tk's loop would not see it.)"""
    def stop(signum, frame):
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, stop) if main_thread else None
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


# ---- commands ------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    if args.prompt == "":
        raise UserError("--prompt is empty: give the text to continue")
    if args.train:
        ignored = [f"--{name.replace('_', '-')}" for name in ("tokens", "prompt", "wait_viewer", "pace", "save")
                   if getattr(args, name) is not None]
        if ignored:
            raise UserError(f"{', '.join(ignored)}: not used by demo --train")
    if args.publish:
        _publisher(args.publish).close()  # a busy port fails now, not after training
    _need_engine("demo")
    if args.train:
        from neuralflow.engine.train_demo import run_train_demo
        args.endpoint, args.window = args.publish, (False if args.headless else None)
        run_train_demo(args)
        return 0
    from neuralflow.engine.demo import run_demo

    return run_demo(args)


def cmd_generate(args) -> int:
    if not args.prompt:  # before anything loads
        raise UserError("--prompt is empty: give the text to continue")
    path = Path(args.model).expanduser()
    if not path.exists():
        hint = (f" (generate reads local folders: `huggingface-cli download {args.model} --local-dir DIR` first)"
                if "/" in args.model and not args.model.startswith((".", "/", "~")) else "")
        raise UserError(f"no such model folder: {args.model}{hint}")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(f"{args.model} is not a Hugging Face model folder (it has no config.json)")
    args.model = str(path)
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")

    publisher = _publisher(None if args.no_publish else args.publish)
    try:
        _need_engine("generate")
        from neuralflow.engine.generate import run

        return run(args, publisher)
    finally:
        if publisher is not None:
            publisher.close()


def cmd_view(args) -> int:
    if not args.headless and (args.count is not None or args.duration is not None):
        raise UserError("--count and --duration stop a --headless view; a window runs until you close it")
    if args.replay:
        from .playback import ReplaySource, damage_note, export, open_recording

        if args.duration is not None:
            raise UserError("--duration stops a live view; a replay ends with its recording (--count N: its first N frames)")
        if args.loop and args.headless:
            raise UserError("--loop replays in the window; --headless writes the recording's frames once")
        recording = open_recording(args.replay)
        if args.headless:
            out = Path(args.out or "neuralflow-replay")
            export(args.replay, gif=out / "replay.gif", png_dir=out, palette=args.palette, fps=args.fps or 15.0,
                   count=args.count)
            return 0
        if note := damage_note(recording):
            print(f"neuralflow view: {args.replay}{note}", file=sys.stderr)
        _check_display()
        _open_window(ReplaySource(recording, fps=args.fps, loop=args.loop), args, f"(replay of {args.replay})")
        return 0
    endpoints = _endpoints(args)
    if args.headless:
        from .record import record_headless

        until = ("" if args.count is not None or args.duration is not None
                 else " until Ctrl-C (use --count or --duration to stop by itself)")
        print(f"neuralflow view: waiting for frames on {', '.join(endpoints)}, writing PNGs to "
              f"{args.out or 'neuralflow-frames'}{until}", file=sys.stderr)
        with _kill_as_ctrl_c():
            record_headless(endpoints, args.out or "neuralflow-frames", count=args.count,
                            duration=args.duration, palette=args.palette, fps=args.fps or 15.0)
        return 0
    _check_display()
    from .stream import Subscriber

    # every frame, not the newest only: the window shows the newest of each poll, and keeps
    # them all for scrubbing and for its recordings (it takes up to 64 per poll, every 4 ms)
    source = Subscriber(endpoints, latest_only=False)
    try:
        _open_window(source, args, f"on {', '.join(endpoints)}")
    finally:
        source.close()
    return 0


def cmd_record(args) -> int:
    from .playback import record_to_file

    with _kill_as_ctrl_c():
        record_to_file(_endpoints(args), args.out, count=args.count, duration=args.duration)
    return 0


def cmd_export(args) -> int:
    if args.gif is None and args.png_dir is None:
        raise UserError("say what to write: --gif PATH and/or --png-dir DIR")
    if args.gif is not None and Path(args.gif).suffix.lower() not in (".gif", ".png", ".apng"):
        raise UserError(f"--gif {args.gif}: the animation must end in .gif (or .png/.apng for APNG)")
    from .playback import export

    export(args.recording, gif=args.gif, png_dir=args.png_dir, palette=args.palette, fps=args.fps,
           zoom=args.zoom, guide=args.guide, caption=not args.no_caption)
    return 0


def cmd_bench(argv: list[str]) -> int:
    _need_engine("bench")
    try:
        from neuralflow.benchmarks.suite import main as bench_main
    except ImportError as err:
        if getattr(err, "name", None) in ("torch", "transformers"):
            raise
        raise UserError("the benchmark suite (neuralflow.benchmarks.suite) is not in this install") from None
    return bench_main(argv) or 0


# ---- parser --------------------------------------------------------------------------------

def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):  # (nan > 0 is False, as is nan <= 0)
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value
    return parse


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**32:  # numpy's range, and the Trainer seeds numpy
        raise argparse.ArgumentTypeError(f"must be 0 to 2**32 - 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="neuralflow", description="Watch a language model think: one picture per forward "
                     "pass of every decoder layer, streamed to a viewer.",
                     epilog="Run `neuralflow COMMAND --help` for a command's flags.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    palette = dict(choices=sorted(PALETTES), default="seed",
                   help="colours (default: seed, the original's hue wheel)")
    connect = dict(action="append", metavar="ENDPOINT", help=f"repeatable; default {DEFAULT_ENDPOINT}")

    p = commands.add_parser("demo", help="train a tiny Mistral on Alice in Wonderland, then watch it write "
                            "(about a minute on 2 CPU cores, nothing downloaded)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds: 20 training steps, 24 tokens (with --train: 12 steps)")
    p.add_argument("--steps", type=_positive(int), help="training steps (default 240; with --train 120)")
    p.add_argument("--tokens", type=_positive(int), help="tokens to generate (default 160)")
    p.add_argument("--prompt", help="start of the text to continue (default 'Alice was ')")
    p.add_argument("--seed", type=_seed, help="random seed, 0 to 2**32 - 1 (default 0)")
    p.add_argument("--out", help="folder for PNGs, GIF and recording (default ./neuralflow-demo; "
                   "with --train ./neuralflow-train)")
    p.add_argument("--headless", action="store_true", help="no window even if there is a display")
    p.add_argument("--publish", metavar="ENDPOINT", help="also stream frames here for other viewers")
    p.add_argument("--wait-viewer", type=float, metavar="S",
                   help="with --publish: wait up to S seconds for a viewer before generating (default 10)")
    p.add_argument("--pace", type=float, help="seconds per token while a window shows it (default 0.08)")
    p.add_argument("--save", metavar="DIR", help="save the trained model and tokenizer here")
    p.add_argument("--train", action="store_true", help="the training demo instead: watch layers drift while "
                   "a model fine-tunes")
    p.set_defaults(run=cmd_demo)

    p = commands.add_parser("generate", help="generate with a local Hugging Face causal LM, streaming frames")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="local model folder (config.json, weights, tokenizer)")
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default 64")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--publish", default=DEFAULT_ENDPOINT, metavar="ENDPOINT", help=f"default {DEFAULT_ENDPOINT}")
    p.add_argument("--no-publish", action="store_true", help="capture without streaming (for timing)")
    p.add_argument("--wait-viewer", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a viewer to connect before generating")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--device-map", choices=("auto",), help="spread the model over the GPUs (accelerate)")
    p.add_argument("--attn", choices=("flash_attention_2", "sdpa", "eager"),
                   help="default: flash_attention_2 where it can run (flash-attn imports, CUDA, 16-bit "
                        "weights, a model that supports it), else sdpa, else eager")
    p.add_argument("--width", type=_positive(int), help="picture width in dims (default: a power of two near "
                   "sqrt(layers x hidden), 512 for Mistral 7B as in the original)")
    p.add_argument("--layout", choices=("bands", "layers"), default="bands")
    p.add_argument("--norm", choices=("seed", "layer", "reference", "prompt"), default="seed",
                   help="seed (default): the original's per-frame scale; layer: the same per layer; "
                   "reference: the first frame's scale, frozen; prompt: a fixed scale from the "
                   "prompt's own values (per layer, lo 0, hi the 99th percentile of |x|), for "
                   "models the seed's scale shows as one flat colour")
    p.set_defaults(run=cmd_generate)

    p = commands.add_parser("view", help="the live window (or --replay a recording; --headless writes PNGs + GIF)")
    p.add_argument("--connect", **connect)
    p.add_argument("--replay", metavar="FILE", help="play a recording instead of a live stream")
    p.add_argument("--loop", action="store_true", help="replay forever (in the window)")
    p.add_argument("--headless", action="store_true", help="no window: write PNGs and a GIF to --out")
    p.add_argument("--out", metavar="DIR", help="where PNGs/recordings go (window default: ., headless: "
                   "./neuralflow-frames or ./neuralflow-replay)")
    p.add_argument("--count", type=_positive(int), help="headless: stop after N frames (a replay: its first N)")
    p.add_argument("--duration", type=_positive(float), help="headless, live: stop after S seconds")
    p.add_argument("--fps", type=_positive(float), help="replay speed (default: as recorded) and GIF frame rate")
    p.add_argument("--palette", **palette)
    p.add_argument("--history", type=_positive(int), default=512, help="frames kept for scrubbing")
    p.add_argument("--geometry", help="window size and place, e.g. 1500x700+0+0")
    p.add_argument("--apng", action="store_true", help="the window's r key records APNG instead of GIF")
    p.set_defaults(run=cmd_view)

    p = commands.add_parser("record", help="subscribe and append frames to a recording file")
    p.add_argument("--connect", **connect)
    p.add_argument("--out", required=True, metavar="FILE", help="recording file (appended to if it exists)")
    p.add_argument("--count", type=_positive(int), help="stop after N frames")
    p.add_argument("--duration", type=_positive(float), help="stop after S seconds")
    p.set_defaults(run=cmd_record)

    p = commands.add_parser("export", help="write a recording as a GIF/APNG and/or PNGs")
    p.add_argument("recording", metavar="RECORDING")
    p.add_argument("--gif", metavar="PATH", help="animation: .gif, or .png/.apng for APNG")
    p.add_argument("--png-dir", metavar="DIR", help="one PNG per frame")
    p.add_argument("--palette", **palette)
    p.add_argument("--fps", type=_positive(float), default=15.0, help="animation frame rate (default 15)")
    p.add_argument("--zoom", type=_positive(int), help="integer scale (default: at least 256 px wide)")
    p.add_argument("--guide", action="store_true", help="PNGs with the layer guide beside them")
    p.add_argument("--no-caption", action="store_true", help="animation without the step/token line")
    p.set_defaults(run=cmd_export)

    commands.add_parser("bench", help="the overhead benchmarks (flags: neuralflow bench --help)", add_help=False)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for the command line: the message, not the source line that warned."""
    print(f"neuralflow: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.showwarning = _one_line_warning
    try:
        if argv[:1] == ["bench"]:  # its flags belong to the suite's own parser
            return cmd_bench(argv[1:])
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # argparse would point at the top-level help, not the command's
            raise UserError(f"unrecognized arguments: {' '.join(unknown)} (see neuralflow {args.command} --help)")
        return args.run(args)
    except (UserError, RecordingError, PublishError) as err:
        print(f"neuralflow: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # whoever read our output went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no complaint at exit
        return 128 + 13  # as if killed by SIGPIPE, like other command-line tools
    except OSError as err:  # a path that cannot be written or read (a file where a folder goes,
        # a full disk, ...); anything else is a bug or the system's trouble, shown in full
        if err.filename is None and err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"neuralflow: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("neuralflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m: run the package's copy, so its UserError is the one raised
    from neuralflow.viewer.cli import main as package_main

    sys.exit(package_main())
