"""`neuralflow demo --train`: watch a small model's layers drift while it overfits one paragraph.

    neuralflow demo --train [--headless] [--steps N]

Builds on engine/probe.py (ProbeCallback, export_timeline) and engine/demo.py (byte tokenizer,
bundled text, the in-process window source). Tests: tests/test_probe.py.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from neuralflow.engine.probe import ProbeCallback, TrainerCallback
from neuralflow.viewer.record import export_timeline


def run_train_demo(args) -> dict:
    """`neuralflow demo --train`: fine-tune a small random Mistral hard on one paragraph of the
    bundled Alice text (engine/demo.py's byte tokenizer) and watch it drift.

    Layers 0-3 and the embedding stay frozen, as in a partial fine-tune, so the drift
    starts at layer 4 and cascades upward; the loss falls from about 4 to about 0.3 by step
    120 (the paragraph is memorized).
    Frames go to a viewer window in this process when there is a display (closing it stops
    training), to `endpoint` when given, and always to OUT/alice_*.png and .gif (plain and
    difference to step 0) and to the recording OUT/alice.nfrec. Reads these attributes of
    `args` when present and not None: quick, steps (120; 12 quick), every (4), lr (1e-3),
    seed (0), out ("neuralflow-train"), endpoint (none), window (None: when a window can
    open). Returns {"out", "frames", "recording", "drift", "jumps", "seconds"}. Runs on one
    thread: about 35 s on a busy 2-core machine.
    """
    import sys

    from neuralflow.engine import demo

    def opt(name, default):
        value = getattr(args, name, None)
        return default if value is None else value

    steps = opt("steps", 12 if opt("quick", False) else 120)
    every, lr, seed, endpoint = opt("every", 4), opt("lr", 1e-3), opt("seed", 0), opt("endpoint", None)
    out = Path(opt("out", "neuralflow-train"))
    window = opt("window", None)
    window = demo.window_available() if window is None else window
    say = lambda line: print(f"neuralflow demo --train: {line}", file=sys.stderr, flush=True)
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this model gains little from a second thread, and a busy machine
    try:                      # makes two threads spin: 16 steps took 92 s instead of 5 s
        return _train_demo(steps, every, lr, seed, endpoint, out, window, say, started)
    finally:
        torch.set_num_threads(threads)


def _train_demo(steps, every, lr, seed, endpoint, out, window, say, started) -> dict:
    import threading

    from transformers import MistralConfig, MistralForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from neuralflow.engine import demo

    torch.manual_seed(seed)
    tokenizer, layers, frozen = demo.byte_tokenizer(), 12, 4
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                           pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = MistralForCausalLM(config)  # untied: the output head learns, the embedding is frozen
    for part in [model.model.embed_tokens, *model.model.layers[:frozen]]:
        part.requires_grad_(False)
    text = demo.load_text()
    passage = text[len(text) // 3: len(text) // 3 + 512]  # the whole fine-tuning set
    ids = torch.tensor(tokenizer(passage)["input_ids"])
    data = [{"input_ids": ids[k:k + 64], "labels": ids[k:k + 64]} for k in range(0, len(ids) - 64, 32)]

    source = demo.QueueSource() if window else None
    out.mkdir(parents=True, exist_ok=True)
    recording = out / "alice.nfrec"
    recording.unlink(missing_ok=True)  # a rerun replaces the last run's recording
    probe = ProbeCallback({"alice": "Alice was beginning to get very tired of sitting by her sister"},
                          tokenizer=tokenizer, every=every, width=64, layout="layers",
                          publish=endpoint, recording=recording, label="demo --train",
                          on_frame=source.frames.put if source else None)
    scratch = tempfile.TemporaryDirectory(prefix="neuralflow-train-")  # the Trainer's output_dir; saves nothing
    targs = TrainingArguments(output_dir=scratch.name, max_steps=steps, learning_rate=lr,
                              per_device_train_batch_size=8, lr_scheduler_type="constant",
                              weight_decay=0.0, report_to="none", save_strategy="no", logging_steps=every,
                              disable_tqdm=True, seed=seed, use_cpu=True)
    trainer = Trainer(model=model, args=targs, train_dataset=data)
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    probe.attach(trainer)
    stop = threading.Event()
    trainer.add_callback(_DemoLines(say, stop))
    say(f"a {layers}-layer Mistral (random init) fine-tuned from layer {frozen} up on "
        f"{len(passage)} bytes of Alice, lr {lr}, {steps} steps, a probe every {every}")
    with scratch:
        if window:
            # closing the window stops training
            demo.beside_window(trainer.train, source, say, on_close=stop.set,
                               name="neuralflow-train-demo", out_dir=out, where="(demo --train)")
        else:
            trainer.train()

    frames = probe.prober.frames["alice"]
    gifs = [export_timeline(frames, out, mode=mode, name=f"alice_{mode}")["gif"] for mode in ("plain", "diff")]
    seconds = time.monotonic() - started
    say(f"{len(frames)} probes in {seconds:.0f} s; wrote PNGs, {gifs[0]}, {gifs[1]} and {recording} "
        f"(neuralflow view --replay {recording})")
    return {"out": out, "frames": frames, "recording": recording, "drift": probe.prober.drift["alice"],
            "jumps": probe.prober.jumps, "seconds": seconds}


class _DemoLines(TrainerCallback):
    """The demo's console: one line per log (step, loss, mean drift, jump layer); stops
    training when `stop` is set."""

    def __init__(self, say, stop):
        self.say, self.stop = say, stop

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.is_set():
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            line = f"step {state.global_step:4d}  loss {logs['loss']:.3f}"
            if "drift/alice/mean" in logs:
                line += f"  drift {logs['drift/alice/mean']:.3f}  jump at layer {logs['drift/alice/jump_layer']}"
            self.say(line)
