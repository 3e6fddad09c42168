"""Training as it runs at scale: two gloo processes under torchrun equal one process with the same global
batch, a run killed mid-epoch resumes to the same weights, mixed precision, gradient accumulation, a frozen
backbone, evaluation with the best checkpoint kept, TensorBoard events, recipes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.errors import ConfigError, DatasetError
from model.lab.training import TrainConfig, train
from worker.synthetic_dataset import write_synthetic_dataset

BIN = Path(sys.executable).parent
SIZE = 64
# No randomness inside the network (drop path, dropout), and the tiny audio encoder frozen: its BatchNorm
# layers would otherwise see each process's half of the batch (PyTorch's SyncBatchNorm, which `train` uses on
# GPUs, does not run on the CPU). The recipes' VGGish is frozen and PVT-v2 has no BatchNorm, so this is the
# configuration real runs have. The comparisons below are about data and gradients.
DETERMINISTIC = ("visual.drop_path_rate=0.0", "decoder.dropout=0.0", "audio.frozen=true")
# what every subprocess gets: one thread each, so two processes on two cores do not fight, and the same
# arithmetic in every run that is compared
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))},
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale-data")
    write_synthetic_dataset(root, subset="s4", videos=4, seed=1, size=SIZE, mp4=False)
    write_synthetic_dataset(root, subset="s4", videos=2, seed=5, split="val", size=SIZE, mp4=False)
    return root


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--data", str(data), "--subset", "s4", "--variant", "avesformer-tiny", "--out", str(out),
            "--size", str(SIZE), "--lr", "2e-3", "--tensorboard", "", "--json"]
    for override in DETERMINISTIC:
        args += ["--set", override]
    return [*args, *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(path)
    return {k: v.float() for k, v in model.state_dict().items()}


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]


def test_two_gloo_processes_train_like_one_process_with_the_same_global_batch(data: Path, tmp_path: Path) -> None:
    single, ddp = tmp_path / "single.safetensors", tmp_path / "ddp.safetensors"
    subprocess.run([str(BIN / "avs"), *_train_args(data, single, "--batch-size", "4", "--epochs", "3")],
                   env=ENV, check=True, capture_output=True, timeout=300)
    run = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(BIN / "avs"),
                          *_train_args(data, ddp, "--batch-size", "2", "--epochs", "3")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])  # rank 0 alone prints the summary
    assert (summary["world_size"], summary["global_batch"], summary["steps"]) == (2, 4, 3)
    # the same losses step by step (each rank's mean, averaged), and the same weights at the end
    for one, two in zip(_log(single), _log(ddp), strict=True):
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-4)  # logged rounded to 5 decimals
    difference = _max_difference(single, ddp)
    assert difference < 1e-4, f"DDP weights differ from one process's by {difference:g}"
    # against a run that is really different (half the global batch), the difference is large: the check bites
    half = tmp_path / "half.safetensors"
    subprocess.run([str(BIN / "avs"), *_train_args(data, half, "--batch-size", "2", "--epochs", "2")],
                   env=ENV, check=True, capture_output=True, timeout=300)
    assert _max_difference(single, half) > 100 * max(difference, 1e-6)


def test_gradient_accumulation_equals_the_larger_batch(data: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.safetensors"
    accumulated = tmp_path / "accumulated.safetensors"
    common = {"data": str(data), "subset": "s4", "variant": "avesformer-tiny", "size": SIZE, "lr": 2e-3,
              "overrides": DETERMINISTIC, "tensorboard": "", "epochs": 2}
    train(TrainConfig(out=str(big), batch_size=4, **common))
    summary = train(TrainConfig(out=str(accumulated), batch_size=2, grad_accum=2, **common))
    assert (summary["steps"], summary["global_batch"]) == (2, 4)
    assert _max_difference(big, accumulated) < 1e-4


def test_a_run_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole.safetensors", tmp_path / "killed.safetensors"
    extra = ("--batch-size", "1", "--epochs", "2", "--save-every", "1")  # 4 steps per epoch, a state per step
    subprocess.run([str(BIN / "avs"), *_train_args(data, whole, *extra)], env=ENV, check=True, capture_output=True,
                   timeout=300)
    proc = subprocess.Popen([str(BIN / "avs"), *_train_args(data, killed, *extra)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    states = killed.with_name(killed.name + ".state")
    deadline = time.monotonic() + 240
    while not any(states.glob("step-000000003-*")):  # mid-epoch 1: three of its four batches done
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no state after three steps"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not killed.exists()
    resumed = subprocess.run([str(BIN / "avs"), *_train_args(data, killed, *extra)], env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert (summary["steps"], summary["resumed_from_step"], summary["steps_this_run"]) == (8, 3, 5)
    assert _max_difference(whole, killed) < 1e-6
    assert [row["step"] for row in _log(killed)] == list(range(1, 9))  # lines after the last state not doubled
    again = subprocess.run([str(BIN / "avs"), *[a for a in _train_args(data, killed, *extra) if a != "--json"]],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert "already complete at step 8" in again.stdout
    assert len(list(states.glob("step-*"))) <= 2  # older states are pruned
    assert not list(states.glob(".partial-*"))


def test_evaluation_keeps_the_best_checkpoint_and_writes_tensorboard_events(data: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run.safetensors"
    summary = train(TrainConfig(data=str(data), subset="s4", variant="avesformer-tiny", out=str(out), size=SIZE,
                                batch_size=2, epochs=3, lr=2e-3, eval_every=1, eval_from=2,
                                tensorboard=str(tmp_path / "tb")))
    evals = [row for row in _log(out) if "miou" in row]
    assert [row["epoch"] for row in evals] == [2, 3]  # from epoch 2, every epoch
    best = max(evals, key=lambda row: row["miou"])
    assert summary["best_miou"] == best["miou"]
    assert summary["best_epoch"] == best["epoch"]
    best_path = Path(summary["best_checkpoint"])
    assert best_path == tmp_path / "run.best.safetensors"
    _, info = load_checkpoint(best_path)
    assert info.provenance["epoch"] == best["epoch"]
    board = EventAccumulator(str(tmp_path / "tb"))
    board.Reload()
    assert [e.step for e in board.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert len(board.Scalars("val/miou")) == 2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu(data: Path, tmp_path: Path, amp: str) -> None:
    out = tmp_path / f"{amp}.safetensors"
    summary = train(TrainConfig(data=str(data), subset="s4", variant="avesformer-tiny", out=str(out), size=SIZE,
                                batch_size=2, epochs=1, amp=amp, clip_grad=1.0, tensorboard=""))
    assert summary["amp"] == {"bf16": "bfloat16", "fp16": "float16"}[amp]
    rows = _log(out)
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)
    assert all(row["grad_norm"] > 0 for row in rows)
    assert all(p.dtype == torch.float32 for p in _weights(out).values())  # master weights stay float32


def test_a_frozen_backbone_gets_no_update_until_its_epochs_are_over(data: Path, tmp_path: Path) -> None:
    from model.build import build_model
    from model.config import with_overrides
    from model.variants import get_config

    torch.manual_seed(123)
    initial = build_model(with_overrides(get_config("avesformer-tiny"), DETERMINISTIC)).state_dict()
    common = {"data": str(data), "subset": "s4", "variant": "avesformer-tiny", "size": SIZE, "lr": 2e-3,
              "overrides": DETERMINISTIC, "tensorboard": "", "batch_size": 4, "freeze_backbone_epochs": 1}
    train(TrainConfig(out=str(tmp_path / "frozen.safetensors"), epochs=1, **common))
    after_one = _weights(tmp_path / "frozen.safetensors")
    visual = [k for k in after_one if k.startswith("visual_encoder.") and initial[k].is_floating_point()]
    rest = [k for k in after_one if k.startswith(("decoder.", "head.")) and initial[k].is_floating_point()]
    assert all(torch.equal(after_one[k], initial[k].float()) for k in visual)
    assert any(not torch.equal(after_one[k], initial[k].float()) for k in rest)
    train(TrainConfig(out=str(tmp_path / "frozen.safetensors"), epochs=2, **common))  # resumed: epoch 2 unfrozen
    after_two = _weights(tmp_path / "frozen.safetensors")
    assert any(not torch.equal(after_two[k], after_one[k]) for k in visual)


def test_recipes_hold_the_published_schedules_and_flags_win(data: Path, tmp_path: Path) -> None:
    from model.lab.recipes import load_recipe

    s4, ms3, avss = load_recipe("s4"), load_recipe("ms3"), load_recipe("avss")
    assert (s4["lr"], s4["batch_size"], s4["epochs"], s4["freeze_backbone_epochs"]) == (2e-5, 2, 30, 5)
    assert (ms3["epochs"], ms3["freeze_backbone_epochs"]) == (60, 10)
    assert (avss["batch_size"], avss["epochs"], avss["freeze_backbone_epochs"], avss["eval_from"],
            avss["eval_every"]) == (4, 30, 0, 10, 2)
    assert all(r["schedule"] == "constant" and r["seed"] == 123 for r in (s4, ms3, avss))
    with pytest.raises(ConfigError, match="is for ms3"):
        load_recipe("ms3", subset="s4")
    bad = tmp_path / "bad.toml"
    bad.write_text('epochs = 3\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match="learning_rate"):
        load_recipe(str(bad))
    # the S4 recipe on the tiny variant, shortened from the command line
    out = tmp_path / "recipe.safetensors"
    run = subprocess.run([str(BIN / "avs"), "train", "--recipe", "s4", "--data", str(data), "--subset", "s4",
                          "--variant", "avesformer-tiny", "--size", str(SIZE), "--epochs", "1", "--max-steps", "1",
                          "--out", str(out), "--tensorboard", "", "--json"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert (summary["lr"], summary["batch_size"], summary["schedule"], summary["epochs"]) == (2e-5, 2, "constant", 1)
    assert summary["freeze_backbone_epochs"] == 5


def test_bad_training_settings_are_refused_before_anything_runs(data: Path, tmp_path: Path) -> None:
    base = {"data": str(data), "subset": "s4", "variant": "avesformer-tiny", "out": str(tmp_path / "x.st")}
    for bad, match in (({"grad_accum": 0}, ">= 1"), ({"schedule": "step"}, "schedule"), ({"amp": "fp8"}, "--amp"),
                       ({"max_steps": 0}, "max_steps"), ({"device": "tpu"}, "--device"),
                       ({"device": "cuda:7"} if not torch.cuda.is_available() else {"device": "tpu"}, "--device"),
                       ({"eval_every": 1, "eval_split": "test"}, "no clip of split 'test'")):
        with pytest.raises((ConfigError, DatasetError), match=match):
            train(TrainConfig(**base, **bad))


def test_the_training_benchmark_times_every_configuration_in_one_run() -> None:
    from model.lab.train_bench import bench_train

    result = bench_train("avesformer-tiny", frames=2, size=64, amp="bf16", steps=1, warmup=0)
    assert set(result["runs"]) == {"float32", "bf16"}
    assert all(run["steps_per_s"] > 0 for run in result["runs"].values())
    assert result["speedup_vs_float32"]["bf16"] == pytest.approx(
        result["runs"]["bf16"]["steps_per_s"] / result["runs"]["float32"]["steps_per_s"], rel=0.01)
