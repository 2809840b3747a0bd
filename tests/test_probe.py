"""Probe frames during training (engine/probe.py): Trainer runs on tiny models, CPU only.

Run: python -m pytest tests/test_probe.py
"""

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Trainer, TrainerCallback, TrainingArguments

from neuralflow.engine import render
from neuralflow.engine.probe import (ProbeCallback, Prober, first_jump, last_token_states,
                                     layer_drift, untouched)
from neuralflow.engine.train_demo import run_train_demo
from neuralflow.viewer.record import export_timeline
from neuralflow.viewer.recording import Recording
from neuralflow.viewer.stream import Subscriber
from tiny_models import VOCAB, tiny

PROMPTS = {"a": [5, 17, 33, 9, 41], "b": [7, 7, 60, 12]}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train several times faster on one thread, and the CI box is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dataset(n=48, length=16, seed=0):
    ids = torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": x, "labels": x} for x in ids]


def train(out, probe=None, *, steps=20, lr=1e-3, model=None, extra_callbacks=(), **extra):
    """Train a tiny Mistral (attention dropout on, so RNG matters) with the HF Trainer."""
    model = model if model is not None else tiny("mistral", attention_dropout=0.2)
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=lr, report_to="none", logging_steps=7, save_strategy="no",
                             disable_tqdm=True, seed=0, use_cpu=True, **extra)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(),
                      callbacks=list(extra_callbacks))
    if probe is not None:
        probe.attach(trainer)
    trainer.train()
    return trainer


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


# ---- training is untouched -------------------------------------------------------------------

@pytest.mark.parametrize("setup", ["plain", "accumulation", "bf16", "checkpointing"])
def test_probing_never_changes_training(tmp_path, setup):
    extra = {"accumulation": dict(gradient_accumulation_steps=2), "bf16": dict(bf16=True)}.get(setup, {})
    models = []
    for with_probe in (False, True):
        model = tiny("mistral", attention_dropout=0.2)
        if setup == "checkpointing":
            # (renamed activation_checkpointing_enable in transformers 5.25)
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        probe = ProbeCallback(PROMPTS, every=5, width=32, recording=tmp_path / f"{setup}.nfrec",
                              strict=True) if with_probe else None
        train(tmp_path / f"run{with_probe}", probe, model=model, **extra)
        models.append(model)
        if probe is not None:
            assert probe.probed == [0, 5, 10, 15, 20]
            assert len(Recording(tmp_path / f"{setup}.nfrec")) == 5 * len(PROMPTS)
            assert all(m.training for m in model.modules())  # left in train mode, as the Trainer had it
    assert_same_weights(weights(models[0]), weights(models[1]))


def test_the_weight_check_sees_a_disturbed_rng(tmp_path):
    """Control for the test above: one extra random draw per step changes the weights (dropout)."""

    class Draw(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            torch.rand(1)

    a = weights(train(tmp_path / "a").model)
    b = weights(train(tmp_path / "b", extra_callbacks=[Draw()]).model)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_untouched_restores_modes_rng_and_grads():
    model = tiny("mistral", attention_dropout=0.2).train()
    model.model.layers[1].eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    model(input_ids=torch.tensor([[4, 5, 6]]), labels=torch.tensor([[4, 5, 6]])).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.manual_seed(3)
    np.random.seed(3)
    expected = (torch.rand(2), np.random.rand(2))
    torch.manual_seed(3)
    np.random.seed(3)
    with untouched(model):
        assert not any(m.training for m in model.modules())
        assert not torch.is_grad_enabled()
        torch.rand(5), np.random.rand(5)
        last_token_states(model, torch.tensor([[4, 5, 6, 7]]))
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())


def test_untouched_goes_back_through_the_models_train():
    """A model's train() override (transformers re-kernelizes there with use_kernels=True) is
    called for the way back too, as a plain eval()/train() round trip would."""
    model = tiny("mistral").train()
    calls = []
    original = type(model).train

    def train(self, mode=True):
        calls.append(mode)
        return original(self, mode)

    model.train = train.__get__(model)
    with untouched(model):
        pass
    assert calls == [False, True] and model.training


# ---- frames, recording, logs ----------------------------------------------------------------

class Reporter(TrainerCallback):
    """Stands in for TensorBoard/W&B: remembers the logs it is handed."""

    def __init__(self):
        self.seen = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.setdefault(state.global_step, {}).update(logs)  # the end summary shares a step


def test_trainer_probes_record_and_log(tmp_path):
    probe = ProbeCallback(PROMPTS, every=5, width=32, label="run", recording=tmp_path / "p.nfrec",
                          export=tmp_path / "timeline", strict=True)
    reporter = Reporter()
    trainer = train(tmp_path / "out", probe, extra_callbacks=[reporter])
    frames = list(Recording(tmp_path / "p.nfrec"))
    assert [f.step for f in frames] == [s for s in (0, 5, 10, 15, 20) for _ in PROMPTS]
    for name in PROMPTS:
        mine = [f for f in frames if f.meta["probe"] == name]
        assert [f.seq for f in mine] == list(range(5))
        assert len({f.session for f in mine}) == 1
        assert all(f.meta["label"] == f"run {name}" and f.norm == "reference" for f in mine)
        assert all(f.token_id == PROMPTS[name][-1] and f.position == len(PROMPTS[name]) - 1 for f in mine)
        # frozen scale: every frame uses step 0's seed statistics
        assert all(np.array_equal(f.lo, mine[0].lo) and np.array_equal(f.hi, mine[0].hi) for f in mine)
        start = probe.prober.start[name]
        np.testing.assert_array_equal(mine[0].pixels, render(start, width=32).pixels.numpy())
        assert mine[0].pixels.shape == (3 * 2, 32)  # 3 layers, 64 dims in bands of 32
    assert len({f.session for f in frames}) == len(PROMPTS)
    # drift keys land in the Trainer's logs at every probe after step 0
    logged = {entry["step"]: entry for entry in trainer.state.log_history if "drift/a/mean" in entry}
    assert sorted(logged) == [5, 10, 15, 20]
    assert all(f"drift/b/layer_{k:02d}" in logged[20] for k in range(3))
    assert all(entry["drift/a/mean"] > 0 and "loss" in entry for entry in logged.values())
    # attach() runs the probe ahead of the other callbacks, so reporters get the drift too
    assert sorted(s for s, logs in reporter.seen.items() if "drift/a/mean" in logs) == [5, 10, 15, 20]
    assert 7 in reporter.seen and "drift/a/mean" not in reporter.seen[7]  # a plain logging step
    # the export: one PNG per probe step and a looping GIF per prompt
    assert sorted(p.name for p in (tmp_path / "timeline").glob("a_*.png")) == [
        f"a_{s:06d}.png" for s in (0, 5, 10, 15, 20)]
    with Image.open(tmp_path / "timeline" / "b.gif") as gif:
        assert gif.n_frames == 5 and gif.info["loop"] == 0


def test_drift_grows_with_the_learning_rate(tmp_path):
    drift = {}
    for lr in (1e-6, 3e-2):
        probe = ProbeCallback(PROMPTS, every=10, width=32, strict=True)
        train(tmp_path / str(lr), probe, lr=lr)
        drift[lr] = probe.prober.drift["a"][-1][1]
        assert probe.prober.drift["a"][0][1].max() == 0.0  # step 0 against itself
    assert drift[3e-2].mean() > 20 * drift[1e-6].mean() > 0


# ---- the jump warning ------------------------------------------------------------------------

@pytest.mark.parametrize("drift,layer", [
    ([0.01, 0.02, 0.02, 0.9, 1.2, 1.5], 3),
    ([0.01, 0.02, 0.04, 0.08, 0.16, 0.32], None),  # smooth growth is not a jump
    ([0.5, 0.6, 0.9, 1.3], 0),  # everything moved, smoothly: it starts at layer 0
    ([0.5, 0.6, 2.0, 3.0], 2),  # everything moved, and from layer 2 over three times as much
    ([0.11, 0.12, 5.0, 6.0], 2),  # a full fine-tune: the first layers move a little too
    ([0.0, 0.0, 0.05, 0.05], None),  # below the floor
    ([0.0, 0.01, float("nan"), 0.2], 2),  # NaN counts as infinite drift
])
def test_first_jump(drift, layer):
    assert first_jump(drift, factor=3.0, floor=0.1) == layer


def test_warning_names_the_first_broken_layer(caplog):
    """Break layer 3 of 6 by hand between two probes: layers 0-2 do not move at all, layers
    3-5 do, and the warning must name layer 3."""
    model = tiny("mistral", num_hidden_layers=6)
    with Prober(model, PROMPTS, width=32, strict=True) as prober:
        prober.probe(0)
        with torch.no_grad():
            mlp = model.model.layers[3].mlp.down_proj.weight
            mlp.add_(torch.randn(mlp.shape, generator=torch.Generator().manual_seed(0)))
        with caplog.at_level(logging.WARNING, logger="neuralflow"):
            metrics = prober.probe(1)
    drift = prober.drift["a"][-1][1]
    assert np.all(drift[:3] == 0) and np.all(drift[3:] > 0.1)
    assert metrics["drift/a/jump_layer"] == 3 and metrics["drift/b/jump_layer"] == 3
    assert prober.jumps == [(1, "a", 3), (1, "b", 3)]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("drift jumps at layer 3" in m for m in messages)


# ---- streaming, plain loops, export, wrappers ------------------------------------------------

def test_one_stream_per_probe_over_zeromq():
    model = tiny("mistral")
    with Prober(model, PROMPTS, publish="tcp://127.0.0.1:*", width=32, label="live") as prober:
        endpoint = prober.endpoints["a"]
        with Subscriber(endpoint, latest_only=False) as sub:
            assert prober.publishers["a"].wait_for_subscribers(1, timeout=5.0)
            prober.probe(0)
            prober.probe(7)
            got = [sub.recv(timeout=5.0) for _ in range(4)]
    assert all(f is not None for f in got)
    assert [(f.meta["label"], f.step) for f in got] == [("live a", 0), ("live b", 0), ("live a", 7), ("live b", 7)]
    assert got[0].session != got[1].session and got[0].session == got[2].session
    assert [f.seq for f in got] == [0, 0, 1, 1]


class Bytes:
    """The smallest tokenizer the Prober needs: __call__ and decode."""

    def __call__(self, text, return_tensors=None):
        return {"input_ids": torch.tensor([[b - 32 for b in text.encode()]])}  # ASCII 32..127

    def decode(self, ids):
        return chr(ids[0] + 32)


def test_prober_in_a_plain_loop_with_a_tokenizer():
    model = tiny("mistral")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Prober(model, "hello", tokenizer=Bytes(), width=32, keep=True) as prober:
        for step in range(4):
            prober.probe(step)
            loss = model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    frames = prober.frames["probe0"]
    assert [f.step for f in frames] == [0, 1, 2, 3] and frames[0].meta["token"] == "o"
    drift = [d.mean() for _, d in prober.drift["probe0"]]
    assert drift[0] == 0 and drift[3] > drift[1] > 0


def test_prompts_as_arrays_and_batches():
    model = tiny("mistral")
    for one in (np.array([5, 6, 7]), [np.int64(5), np.int64(6), np.int64(7)], torch.tensor([[5, 6, 7]])):
        with Prober(model, one, width=32) as prober:
            assert list(prober.prompts) == ["probe0"] and prober.prompts["probe0"].tolist() == [[5, 6, 7]]
    with pytest.raises(ValueError, match=r"\(2, 3\) batch"):
        Prober(model, torch.tensor([[5, 6, 7], [8, 9, 10]]))
    from transformers import BatchEncoding  # a tokenizer's output, a Mapping but not a dict
    encoded = BatchEncoding({"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3)})
    with Prober(model, encoded, width=32) as prober:
        assert list(prober.prompts) == ["probe0"] and prober.prompts["probe0"].tolist() == [[5, 6, 7]]


def test_trainer_with_a_processor_probes_through_its_tokenizer(tmp_path):
    class Processor:  # as LlavaProcessor: images first, the tokenizer an attribute
        tokenizer = Bytes()

        def __call__(self, images=None, text=None, **kwargs):
            raise ValueError("Incorrect image source")

    probe = ProbeCallback("hello", every=1, width=32)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True)
    Trainer(model=tiny("mistral"), args=args, train_dataset=dataset(8), processing_class=Processor(),
            callbacks=[probe]).train()
    assert probe.probed == [0, 1, 2]
    assert [f.meta["token"] for f in probe.prober.frames["probe0"]] == ["o"] * 3

    # a real tokenizer that keeps something else in .tokenizer (mistral-common's does) is used as is
    from neuralflow.engine.demo import byte_tokenizer
    tokenizer = byte_tokenizer()
    tokenizer.tokenizer = "not a tokenizer"
    probe = ProbeCallback("hello", every=1, width=32)
    Trainer(model=tiny("mistral", vocab_size=len(tokenizer)), args=args, train_dataset=dataset(8),
            processing_class=tokenizer, callbacks=[probe]).train()
    assert [f.meta["token"] for f in probe.prober.frames["probe0"]] == ["o"] * 3


def test_probe_inside_bf16_autocast():
    """A plain loop that probes inside its autocast region: states are taken as float32."""
    model = tiny("mistral")
    with Prober(model, PROMPTS, width=32, strict=True) as prober:
        prober.probe(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            metrics = prober.probe(1)
    assert prober.start["a"].dtype == torch.float32
    assert 0 < metrics["drift/a/mean"] < 0.1  # only bf16 rounding moved
    assert prober.frames["a"][1].pixels.shape == (6, 32)


def test_errors_disable_probing_unless_strict(caplog):
    model = tiny("mistral")
    with Prober(model, [[5, 6, VOCAB + 50]], width=32) as prober:  # an id past the vocabulary
        with caplog.at_level(logging.ERROR, logger="neuralflow"):
            assert prober.probe(0) == {}
        assert not prober.enabled and "probing disabled" in caplog.text
        assert prober.probe(1) == {}
    assert all(m.training is False for m in model.modules())  # tiny() is in eval mode: kept
    with Prober(model, [[5, 6, VOCAB + 50]], width=32, strict=True) as prober:
        with pytest.raises(IndexError):
            prober.probe(0)


@pytest.mark.parametrize("mode", ["plain", "side", "diff"])
def test_export_timeline(tmp_path, mode):
    model = tiny("mistral")
    with Prober(model, PROMPTS, width=32) as prober:
        for step in (0, 10, 20):
            prober.probe(step)
            with torch.no_grad():
                model.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    out = export_timeline(prober.frames["a"], tmp_path, mode=mode, name="a")
    assert [p.name for p in out["pngs"]] == ["a_000000.png", "a_000010.png", "a_000020.png"]
    zoom = {"plain": 8, "side": 4, "diff": 8}[mode]  # narrow pictures zoomed to at least 256 px
    width = {"plain": 32, "side": 32 + 4 + 32, "diff": 32}[mode] * zoom
    with Image.open(out["pngs"][0]) as png:
        assert png.width == width and png.height > 6 * zoom  # picture plus the caption strip
    with Image.open(out["gif"]) as gif:
        assert gif.n_frames == 3 and gif.info["loop"] == 0 and gif.info["duration"] == 70
    if mode == "diff":  # step 0 against itself is all "unchanged" (128)
        with Image.open(out["pngs"][0]) as png:
            assert set(np.asarray(png)[: 6 * 8].ravel().tolist()) == {128}


def test_export_timeline_again_into_the_same_folder(tmp_path):
    """A shorter export of one name deletes the longer one's later steps (they would pass for
    this run's); one resumed from a checkpoint (its later steps only) keeps the earlier ones;
    another name's files are left alone."""
    with Prober(tiny("mistral"), PROMPTS, width=32) as prober:
        for step in (0, 10, 20, 30):
            prober.probe(step)
    frames = prober.frames["a"]
    export_timeline(frames, tmp_path, name="a_b")  # a name that starts like "a"
    export_timeline(frames, tmp_path, name="a")
    export_timeline(frames[:2], tmp_path, name="a")
    names = lambda stem: sorted(p.name for p in tmp_path.glob(f"{stem}_0*.png"))
    assert names("a") == ["a_000000.png", "a_000010.png"] and len(names("a_b")) == 4
    export_timeline(frames, tmp_path, name="a")
    export_timeline(frames[2:], tmp_path, name="a")  # resumed at step 20
    assert len(names("a")) == 4


def test_layer_drift_is_relative_to_the_start_spread():
    start = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    moved = start.clone()
    moved[1] += 0.5 * start[1].std()
    drift = layer_drift(moved, start)
    assert drift[0] == drift[2] == 0 and drift[1] == pytest.approx(0.5)


def test_peft_lora_model(tmp_path):
    """LoRA (dropout on) through PEFT: frames come from the base model's layers, training is
    the same with and without probes, and the LoRA layers' drift shows."""
    import peft  # in the test extra: CI always has it
    runs = []
    for with_probe in (False, True):
        base = tiny("mistral", attention_dropout=0.2)
        config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
        model = peft.get_peft_model(base, config)
        probe = ProbeCallback(PROMPTS, every=10, width=32, strict=True) if with_probe else None
        train(tmp_path / f"lora{with_probe}", probe, model=model, lr=1e-2)
        runs.append(weights(model))
    assert_same_weights(*runs)
    assert probe.probed == [0, 10, 20] and probe.prober.layers == 3
    assert probe.prober.drift["a"][-1][1].max() > 0


def test_train_demo_runs_headless(tmp_path, capsys):
    args = SimpleNamespace(out=tmp_path, window=False, endpoint="tcp://127.0.0.1:*", steps=8, every=4,
                           quick=None, seed=None)
    result = run_train_demo(args)
    assert [f.step for f in result["frames"]] == [0, 4, 8]
    assert result["jumps"][0][2] == 4  # layers 0-3 are frozen: the drift starts at layer 4
    assert (tmp_path / "alice_plain.gif").exists() and (tmp_path / "alice_diff_000008.png").exists()
    assert "jump at layer 4" in capsys.readouterr().err


def test_a_sink_that_fails_to_open_leaves_no_port_bound(tmp_path):
    from neuralflow.viewer.recording import RecordingError
    from neuralflow.viewer.stream import Publisher
    model = tiny("mistral")
    probe = Publisher("tcp://127.0.0.1:*")  # find a free port, then free it
    endpoint = probe.endpoint
    probe.close()
    not_a_recording = tmp_path / "notes.txt"
    not_a_recording.write_text("not a recording")
    with pytest.raises(RecordingError):
        Prober(model, [[5, 6, 7]], publish=endpoint, recording=not_a_recording)
    Publisher(endpoint).close()  # the port is free again


def test_resume_from_a_checkpoint_keeps_drift_against_step_0(tmp_path, caplog):
    """The checkpoint keeps the step-0 states: a resumed run logs the same drift as an
    uninterrupted one, under the same keys, from the same output_dir or from another one named
    in TrainingArguments. Without them (missing, damaged) it says so and trains on."""
    def run(out, resume=None, strict=True, in_args=False):
        args = TrainingArguments(output_dir=str(tmp_path / out), max_steps=12, per_device_train_batch_size=4,
                                 learning_rate=1e-2, report_to="none", logging_steps=3, save_strategy="steps",
                                 save_steps=6, disable_tqdm=True, seed=0, use_cpu=True,
                                 resume_from_checkpoint=resume if in_args else None)
        trainer = Trainer(model=tiny("mistral"), args=args, train_dataset=dataset())
        ProbeCallback(PROMPTS, every=3, width=32, strict=strict).attach(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return {h["step"]: h["drift/a/layer_02"] for h in trainer.state.log_history if "drift/a/layer_02" in h}

    whole = run("a")
    checkpoint = str(tmp_path / "a" / "checkpoint-6")
    for resumed in (run("a", checkpoint), run("b", checkpoint, in_args=True)):
        assert sorted(resumed) == [3, 6, 9, 12]  # 3 and 6 from the checkpoint's state
        for step in (9, 12):
            assert resumed[step] == pytest.approx(whole[step], rel=1e-5)
    saved = tmp_path / "a" / "checkpoint-6" / "neuralflow_probe.pt"
    assert not list(saved.parent.glob("*.partial"))
    saved.write_bytes(b"half a file")
    damaged = run("a", checkpoint, strict=False)
    assert "without the probes' step-0 states" in caplog.text and damaged[12] < whole[12] / 3
    saved.unlink()
    caplog.clear()
    run("c", checkpoint, strict=False)  # elsewhere, and not in TrainingArguments: not found
    assert "no neuralflow_probe.pt in" in caplog.text and "measured from step 6" in caplog.text


def test_trainer_options_and_the_final_model(tmp_path):
    """rank= is one of Prober's options; a run whose last step is not a multiple of `every` is
    probed at its end too; a prompt name that is no file name still exports."""
    probe = ProbeCallback({"qa/fox": [5, 17, 33]}, every=5, width=32, rank=0, export=tmp_path / "timeline",
                          strict=True)
    trainer = train(tmp_path / "run", probe, steps=12)
    assert probe.probed == [0, 5, 10, 12]
    assert [f.step for f in probe.prober.frames["qa/fox"]] == [0, 5, 10, 12]
    logged = [h for h in trainer.state.log_history if "drift/qa/fox/mean" in h]
    assert logged[-1]["step"] == 12 and "loss" in logged[-1]  # a log of its own, as every probe's
    assert (tmp_path / "timeline" / "qa_fox.gif").exists()


def test_the_last_step_is_probed_through_the_logs(tmp_path):
    """The last step's drift reaches the reporters as every probe's does, also when `every`
    does not divide max_steps or exceeds it; a run stopped early by another callback, after its
    last probe, still gets the final model probed (into log_history)."""
    for every, steps, expected in ((5, 7, [5, 7]), (50, 3, [3])):
        probe = ProbeCallback(PROMPTS, every=every, width=32, strict=True)
        reporter = Reporter()
        trainer = train(tmp_path / f"run{every}", probe, steps=steps, extra_callbacks=[reporter])
        assert probe.probed == [0, *expected]
        assert sorted(s for s, logs in reporter.seen.items() if "drift/a/mean" in logs) == expected
        assert "loss" in reporter.seen[steps]

    class Stop(TrainerCallback):  # runs after the probe (attach() puts it ahead)
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 4

    probe = ProbeCallback(PROMPTS, every=3, width=32, strict=True)
    trainer = train(tmp_path / "stopped", probe, steps=20, extra_callbacks=[Stop()])
    assert probe.probed == [0, 3, 4]
    assert [h["step"] for h in trainer.state.log_history if "drift/a/mean" in h] == [3, 4]


def test_bad_arguments_fail_when_built():
    """What would fail at on_train_begin or at the first probe (disabling probing for the whole
    run) fails when the callback or the Prober is built."""
    for options in (dict(norm="bogus"), dict(layout="rows"), dict(width=0), dict(ranks="1"),
                    dict(every=2.5), dict(every=0), dict(every=True), dict(every="5")):
        with pytest.raises(ValueError, match=next(iter(options))):
            ProbeCallback(PROMPTS, **{"every": 5, **options})
    for empty in ([], {}, ()):
        with pytest.raises(ValueError, match="no probe prompts"):
            ProbeCallback(empty)
        with pytest.raises(ValueError, match="no probe prompts"):
            Prober(tiny("mistral"), empty)
    with pytest.raises(TypeError, match="evry"):  # a typo'd option, not only once train() starts
        ProbeCallback(PROMPTS, evry=5)
    with pytest.raises(ValueError, match="norm"):
        Prober(tiny("mistral"), PROMPTS, norm="bogus")
    assert ProbeCallback(PROMPTS, every=np.int64(5), width=32, rank=0).every == 5


def test_tokenizer_output_inside_a_list_or_dict():
    from transformers import BatchEncoding
    model = tiny("mistral")
    encoded = BatchEncoding({"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3)})
    plain = {"input_ids": [8, 9], "attention_mask": [1, 1]}  # a tokenizer's output without tensors
    with Prober(model, {"x": encoded, "y": plain}, width=32) as prober:
        assert {n: p.tolist() for n, p in prober.prompts.items()} == {"x": [[5, 6, 7]], "y": [[8, 9]]}
    with Prober(model, [encoded, plain], width=32) as prober:
        assert [p.tolist() for p in prober.prompts.values()] == [[[5, 6, 7]], [[8, 9]]]
    with pytest.raises(ValueError, match="input_ids"):
        Prober(model, [{"attention_mask": [1, 1]}])


def test_export_names_that_clash_are_refused(tmp_path):
    """Two names with one file stem would overwrite each other's export."""
    prompts = {"qa/fox": [5, 17, 33], "qa fox": [7, 7, 60]}
    with pytest.raises(ValueError, match="'qa/fox' and 'qa fox' both export as 'qa_fox'"):
        ProbeCallback(prompts, export=tmp_path)
    ProbeCallback(prompts)  # without an export they do not clash


def test_attach_after_callbacks_does_not_add_a_second_copy(tmp_path):
    probe = ProbeCallback(PROMPTS, every=5, width=32, recording=tmp_path / "r.nfrec", strict=True)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4,
                             report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=tiny("mistral"), args=args, train_dataset=dataset(), callbacks=[probe])
    probe.attach(trainer)
    probe.attach(trainer)
    callbacks = trainer.callback_handler.callbacks
    assert sum(c is probe for c in callbacks) == 1 and callbacks[1] is probe  # moved ahead of the rest
    trainer.train()
    frames = [f for f in Recording(tmp_path / "r.nfrec") if f.meta["probe"] == "a"]
    assert [f.step for f in frames] == [0, 5] and len({f.session for f in frames}) == 1


def test_prompts_from_a_generator(tmp_path):
    """A one-shot iterable is read once, when the callback is built, and still probes."""
    probe = ProbeCallback((ids for ids in ([5, 17, 33], [7, 7, 60])), every=1, width=32, strict=True)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=tiny("mistral"), args=args, train_dataset=dataset())
    probe.attach(trainer)
    trainer.train()
    assert probe.probed == [0, 1, 2] and list(probe.prompts) == ["probe0", "probe1"]
