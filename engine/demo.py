"""`neuralflow demo`: a small Mistral learns a page of Alice, then writes while you watch its layers.

    neuralflow demo                      # about a minute on 2 CPU cores, nothing downloaded
    neuralflow demo --quick --headless   # a few seconds: what the tests run

What it does, all offline:
  1. a byte-level tokenizer (every byte is a token, plus <pad> <s> </s>), built with
     `tokenizers` and wrapped as a PreTrainedTokenizerFast, so save_pretrained round-trips;
  2. a 4-layer, 256-wide Mistral from its config (random init);
  3. a short training run on engine/data/alice.txt (the opening of "Alice's Adventures in
     Wonderland", public domain), with a progress line, so the layers carry real structure;
  4. generation with the capture engine attached: one frame per forward pass (prefill, then one
     per new token), tokens printed as they come. The picture uses norm="reference" with a
     scale measured on the text (see picture_reference), 32 dims wide: 32x32 pixels.
     With a display the frames go to a viewer window (open until you close it); without one,
     to OUT/frame_NNNN.png, OUT/demo.gif and OUT/sheet.png (the first 24 frames side by side),
     and the paths are printed. Every run also writes OUT/demo.nfrec, which
     `neuralflow view --replay` plays back. `--save DIR` keeps the trained checkpoint for
     `neuralflow generate --model DIR`; `--publish ENDPOINT` streams to other viewers too.
Timing: about 55 s on 2 idle CPU cores (training 50 s); see demo_threads for the thread count.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast, TextStreamer

from neuralflow.engine.capture import Engine
from neuralflow.engine.layers import typical_scale
from neuralflow.viewer.recording import RecordingWriter
from neuralflow.viewer.record import animation_frames, drop_stale_frames, save_png, write_animation

DATA = Path(__file__).parent / "data" / "alice.txt"
SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2; byte b is id 3 + b


@dataclass
class DemoConfig:
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    steps: int = 240  # training steps
    batch: int = 16
    context: int = 64  # tokens per training sequence
    lr: float = 3e-3
    new_tokens: int = 160
    prompt: str = "Alice was "
    temperature: float = 0.7
    width: int = 32  # picture width in dims: a 256-wide layer fills 8 rows
    quantile: float = 0.99  # picture scale: per layer, this quantile of |x| over the text is `hi`
    zoom: int = 8  # PNG/GIF scale
    seed: int = 0

    @property
    def vocab(self) -> int:
        return len(SPECIALS) + 256


PRESETS = {
    "default": DemoConfig(),
    "quick": DemoConfig(steps=20, new_tokens=24),
}


# ---- tokenizer and model -------------------------------------------------------------------

def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per byte (any text round-trips), offline and saveable."""
    table = _byte_to_char()
    vocab = {name: i for i, name in enumerate(SPECIALS)}
    vocab.update({table[b]: len(SPECIALS) + b for b in range(256)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: every byte stays a token
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_input_names=["input_ids", "attention_mask"])


def _byte_to_char() -> dict[int, str]:
    """The printable character ByteLevel uses for each byte (the GPT-2 byte alphabet)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in kept}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_model(cfg: DemoConfig) -> MistralForCausalLM:
    torch.manual_seed(cfg.seed)
    config = MistralConfig(vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=2 * cfg.hidden,
                           num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                           num_key_value_heads=cfg.kv_heads, max_position_embeddings=1024,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return MistralForCausalLM(config)


def load_text() -> str:
    return DATA.read_text(encoding="utf-8")


# ---- training ----------------------------------------------------------------------------

def train(model, tokenizer, text: str, cfg: DemoConfig, say=print) -> float:
    """AdamW on random windows of `text`, warm-up then cosine decay; returns the last loss."""
    data = torch.tensor(tokenizer(text)["input_ids"])
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(1, cfg.steps // 10)

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    progress = _Progress("training", cfg.steps, say)
    model.train()
    loss = float("nan")
    for step in range(cfg.steps):
        starts = torch.randint(0, len(data) - cfg.context, (cfg.batch,), generator=generator)
        batch = torch.stack([data[s:s + cfg.context] for s in starts.tolist()])
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss = out.loss.item()  # sync point, once per training step (fine: this is the demo)
        progress.update(step + 1, f"loss {loss:.2f}")
    progress.done(f"loss {loss:.2f}")
    model.eval()
    return loss


class _Progress:
    """One self-updating line on a terminal; a line per tenth of the work otherwise."""

    def __init__(self, what: str, total: int, say):
        self.what, self.total, self.say = what, total, say
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.shown = 0

    def update(self, done: int, note: str = "") -> None:
        seconds = time.monotonic() - self.start
        line = f"{self.what} {done:4d}/{self.total}  {note}  {seconds:5.1f} s"
        if self.tty:
            bar = "#" * (24 * done // self.total)
            print(f"\r{self.what} [{bar:<24}] {line[len(self.what) + 1:]}", end="", file=sys.stderr, flush=True)
        elif done * 10 // self.total > self.shown or done == 1:
            self.shown = done * 10 // self.total
            self.say(line)

    def done(self, note: str = "") -> None:
        if self.tty:
            print(file=sys.stderr)
        self.say(f"{self.what} done in {time.monotonic() - self.start:.1f} s, {note}")


# ---- picture scale -------------------------------------------------------------------------

def picture_reference(model, tokenizer, text: str, cfg: DemoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) per layer for norm="reference": lo 0, hi the cfg.quantile of |layer output| over
    a stretch of the training text (layers.typical_scale). This model's values are larger than a
    7B model's (variance ~50): the seed's scale would show one flat colour."""
    ids = torch.tensor(tokenizer(text)["input_ids"][:cfg.context * 8])[None]
    return typical_scale(model, ids, cfg.quantile, skip=8)


# ---- generation ----------------------------------------------------------------------------

class _PacedStreamer(TextStreamer):
    """Prints tokens as they come, waiting `pace` seconds per token (until `hurry` is set) so
    that a person can follow the window."""

    def __init__(self, tokenizer, pace: float, hurry: threading.Event):
        super().__init__(tokenizer)
        self.pace, self.hurry = pace, hurry

    def put(self, value):
        super().put(value)
        if self.pace:
            self.hurry.wait(self.pace)


def generate(model, tokenizer, cfg: DemoConfig, sinks, reference, *, publish: str | None = None,
             wait_viewer: float = 0.0, pace: float = 0.0, hurry: threading.Event | None = None) -> dict:
    """Generate cfg.new_tokens with the engine attached; every frame goes to each sink (and to
    `publish`, after waiting up to `wait_viewer` seconds for a subscriber there).
    reference: the picture's (lo, hi), see picture_reference."""
    inputs = tokenizer(cfg.prompt, return_tensors="pt")
    torch.manual_seed(cfg.seed)

    def deliver(frame):
        for sink in sinks:
            sink(frame)

    started = time.monotonic()
    streamer = _PacedStreamer(tokenizer, pace, hurry or threading.Event())
    # 64 ring slots (64 small frames): a delivery thread starved of the GIL for a few tokens on a
    # busy machine catches up instead of dropping frames from the demo's recording
    with Engine(model, width=cfg.width, norm="reference", reference=reference, tokenizer=tokenizer,
                on_frame=deliver, publish=publish, label="neuralflow demo", slots=64) as engine:
        if engine.publisher is not None and wait_viewer > 0:
            print(f"neuralflow demo: waiting up to {wait_viewer:g} s for a viewer on {engine.publisher.endpoint}",
                  file=sys.stderr, flush=True)
            engine.publisher.wait_for_subscribers(1, wait_viewer)
        model.generate(**inputs, max_new_tokens=cfg.new_tokens, min_new_tokens=cfg.new_tokens,
                       do_sample=True, temperature=cfg.temperature, top_k=40,
                       pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    return dict(engine.stats, seconds=time.monotonic() - started)


def contact_sheet(frames, path, *, columns: int = 8, zoom: int = 6, palette: str = "seed") -> Path:
    """The first frames side by side, each captioned with its step and input token (one PNG)."""
    images = [im.convert("RGB") for im in animation_frames(frames, palette=palette, zoom=zoom, text=True)]
    pad, width, height = 6, images[0].width, images[0].height
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (width + pad) + pad, rows * (height + pad) + pad), (24, 24, 28))
    for k, image in enumerate(images):
        sheet.paste(image, (pad + (k % columns) * (width + pad), pad + (k // columns) * (height + pad)))
    sheet.save(path)
    return Path(path)


class QueueSource:
    """A frame source for the window (recv/state/stats), fed from the engine's thread."""

    def __init__(self):
        self.frames: queue.SimpleQueue = queue.SimpleQueue()
        self.finished = False
        self.stats: dict = {}

    def recv(self, timeout=None):
        try:
            return self.frames.get(timeout=timeout) if timeout else self.frames.get_nowait()
        except queue.Empty:
            return None

    @property
    def state(self) -> str:
        return "done" if self.finished else "live"


def beside_window(work, source: QueueSource, say, on_close=None, name: str = "neuralflow-demo",
                  **window) -> None:
    """Run work() in a worker thread while a viewer window shows `source` in this (main) thread,
    until the window is closed; then on_close(), wait for the worker, and raise its error here.
    window: ViewerWindow's options (out_dir, where, echo)."""
    import tkinter

    from neuralflow.viewer.window import ViewerWindow

    failed: list = []

    def worker():
        try:
            work()
        except BaseException as err:  # re-raised in the main thread
            failed.append(err)
        finally:
            source.finished = True

    root = tkinter.Tk()
    ViewerWindow(root, source, **window)
    thread = threading.Thread(target=worker, name=name, daemon=True)
    thread.start()
    say("the viewer window is open; close it (q) to finish")
    root.mainloop()
    if on_close is not None:
        on_close()
    thread.join()
    if failed:
        raise failed[0]


def window_available() -> bool:
    """Whether a Tk window can open here (a display, and tkinter installed)."""
    try:
        import tkinter
        root = tkinter.Tk()
        root.destroy()
        return True
    except Exception:  # ImportError, TclError (no display), anything else: no window
        return False


# ---- the command ---------------------------------------------------------------------------

def run_demo(args) -> int:
    """`neuralflow demo`. Reads args.quick, steps, tokens, out, headless, publish, wait_viewer,
    save, prompt, seed, pace (all may be None)."""
    cfg = PRESETS["quick" if getattr(args, "quick", False) else "default"]
    for name, field in (("steps", "steps"), ("tokens", "new_tokens"), ("prompt", "prompt"), ("seed", "seed")):
        if getattr(args, name, None) is not None:
            cfg = replace(cfg, **{field: getattr(args, name)})
    out = Path(getattr(args, "out", None) or "neuralflow-demo")
    say = lambda line: print(f"neuralflow demo: {line}", file=sys.stderr, flush=True)
    window = not getattr(args, "headless", False) and window_available()
    if not window and not getattr(args, "headless", False):
        say("no display here: writing PNGs and a GIF instead of opening a window")
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(demo_threads())
    try:
        return _run(args, cfg, out, window, say, started)
    finally:
        torch.set_num_threads(threads)


def demo_threads() -> int:
    """Half the cores, 1 to 4: this small model gains little from more, and on a 2-core machine
    a second thread makes every step wait for whatever else runs (2-4x slower under load)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _run(args, cfg: DemoConfig, out: Path, window: bool, say, started: float) -> int:
    tokenizer = byte_tokenizer()
    model = build_model(cfg)
    text = load_text()
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    say(f"{cfg.layers}-layer Mistral, hidden {cfg.hidden} ({millions:.1f}M parameters, random init), "
        f"learning {len(text.encode())} bytes of Alice in Wonderland, {cfg.steps} steps")
    train(model, tokenizer, text, cfg, say)
    if getattr(args, "save", None):
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
        say(f"saved the trained model to {args.save} "
            f"(try: neuralflow generate --model {args.save} --prompt 'Alice' --norm prompt)")

    reference = picture_reference(model, tokenizer, text, cfg)
    out.mkdir(parents=True, exist_ok=True)
    recording = out / "demo.nfrec"
    recording.unlink(missing_ok=True)
    frames: list = []
    with RecordingWriter(recording) as writer:
        sinks = [frames.append, writer.write]
        say(f"generating {cfg.new_tokens} tokens, one picture per forward pass:")
        if window:
            stats = _generate_in_window(model, tokenizer, cfg, sinks, reference, args, say)
        else:
            stats = generate(model, tokenizer, cfg, sinks, reference, publish=getattr(args, "publish", None),
                             wait_viewer=_wait_viewer(args))
    if not frames:
        say(f"no frames were captured ({stats})")
        return 1
    say(f"{stats['delivered']} frames ({frames[0].height}x{frames[0].width} px each, "
        f"{cfg.layers} layers x {cfg.hidden} dims) in {stats['seconds']:.1f} s, {stats['dropped']} dropped")

    if not window:
        pngs = [save_png(f, out / f"frame_{i:04d}.png", zoom=cfg.zoom) for i, f in enumerate(frames)]
        if stale := drop_stale_frames(pngs):
            say(f"deleted {stale} frame PNGs an earlier, longer demo left in {out}/")
        gif = write_animation(frames, out / "demo.gif", zoom=cfg.zoom, text=True)
        sheet = contact_sheet(frames[:24], out / "sheet.png")
        say(f"wrote {len(pngs)} PNGs to {out}/ (frame_0000.png ...), the animation {gif} and {sheet}")
    say(f"replay with: neuralflow view --replay {recording}")
    say(f"total {time.monotonic() - started:.0f} s")
    return 0


def _wait_viewer(args) -> float:
    wait = getattr(args, "wait_viewer", None)
    return 10.0 if wait is None else wait


def _generate_in_window(model, tokenizer, cfg, sinks, reference, args, say) -> dict:
    """Generation beside the window, which stays until closed."""
    source = QueueSource()
    result: dict = {}
    hurry = threading.Event()  # set when the window closes: finish without pacing
    pace = getattr(args, "pace", None)

    def work():
        result.update(generate(model, tokenizer, cfg, [*sinks, source.frames.put], reference,
                               publish=getattr(args, "publish", None), wait_viewer=_wait_viewer(args),
                               hurry=hurry, pace=0.08 if pace is None else pace))

    # the window's status lines stay in the window: on stderr they would split the streamed text
    beside_window(work, source, say, on_close=hurry.set,
                  out_dir=getattr(args, "out", None) or "neuralflow-demo", where="(demo)", echo=False)
    return result
