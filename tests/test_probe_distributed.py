"""ProbeCallback in a two-process torch.distributed (gloo, CPU) Trainer run.

Only rank 0 probes, publishes and records by default; with ranks="all" every rank does, its
frames carry its rank. Run: python -m pytest tests/test_probe_distributed.py
"""

import json
import os
import socket

import torch
import torch.multiprocessing as mp

from neuralflow.viewer.recording import Recording

PROMPTS = {"a": [5, 17, 33, 9, 41], "b": [7, 7, 60, 12]}
STEPS, EVERY = 8, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from transformers import Trainer, TrainingArguments

    from neuralflow.engine.probe import ProbeCallback, Prober
    from test_probe import dataset
    from tiny_models import tiny

    model = tiny("mistral", attention_dropout=0.2)
    only0 = ProbeCallback(PROMPTS, every=EVERY, width=32, publish="tcp://127.0.0.1:*",
                          recording=os.path.join(out, "only0.nfrec"), strict=True)
    everyone = ProbeCallback(PROMPTS, every=EVERY, width=32, ranks="all", publish="tcp://127.0.0.1:*",
                             recording=os.path.join(out, "all.nfrec"), strict=True)
    args = TrainingArguments(output_dir=os.path.join(out, "trainer"), max_steps=STEPS,
                             per_device_train_batch_size=2, learning_rate=1e-2, report_to="none",
                             save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True,
                             ddp_backend="gloo", logging_steps=100)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(n=32))
    only0.attach(trainer)
    everyone.attach(trainer)
    trainer.train()
    result = {"world": torch.distributed.get_world_size(), "logged": [
        e["step"] for e in trainer.state.log_history if "drift/a/mean" in e]}
    for key, probe in (("only0", only0), ("all", everyone)):
        result[key] = dict(probed=probe.probed, active=probe.prober.active,
                           published=probe.prober.published, recorded=probe.prober.recorded)
    # a plain loop with a DDP-wrapped model: rank 0 probes alone, so the Prober must call the
    # inner module (DDP's own forward would wait for rank 1 in a collective)
    ddp = torch.nn.parallel.DistributedDataParallel(tiny("mistral"))
    with Prober(ddp, PROMPTS, width=32, strict=True) as prober:
        result["ddp_probe"] = len(prober.probe(0)) > 0
    torch.distributed.barrier()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_only_rank0_probes_by_default(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    probes = len(range(0, STEPS + 1, EVERY)) * len(PROMPTS)
    for rank, result in enumerate(results):
        assert result["world"] == 2
        assert result["only0"]["probed"] == result["all"]["probed"] == [0, 4, 8]  # same schedule
        assert result["only0"]["active"] == (rank == 0)
        assert result["only0"]["published"] == result["only0"]["recorded"] == (probes if rank == 0 else 0)
        assert result["all"]["published"] == result["all"]["recorded"] == probes
    assert results[0]["logged"] == [4, 8] and results[1]["logged"] == [4, 8]
    assert results[0]["ddp_probe"] and not results[1]["ddp_probe"]
    only0 = list(Recording(tmp_path / "only0.nfrec"))
    assert len(only0) == probes and {f.rank for f in only0} == {0}
    assert not (tmp_path / "only0.rank1.nfrec").exists()
    for rank in range(2):
        frames = list(Recording(tmp_path / f"all.rank{rank}.nfrec"))
        assert len(frames) == probes and {f.rank for f in frames} == {rank}
        assert {f.meta["label"] for f in frames} == {f"a rank {rank}", f"b rank {rank}"}
