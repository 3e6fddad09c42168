"""ONNX export: ONNX Runtime reproduces PyTorch's mask logits, the CLI writes a valid file, the benchmark's JSON.

Measured max |logit difference| (float32, CPUExecutionProvider, batches 1/3/8, 3 draws each, 2-core x86 CPU):
2.5e-5 to 5.7e-5 for the demo checkpoint, whose logits reach |50-75| (a relative error of ~1e-6, float32
rounding); 2e-7 to 3.5e-7 for randomly initialised avesformer-tiny and 1e-7 to 2e-7 for avsegformer-tiny
(logits ~0.1-0.2). The tests allow 1e-4 + 1e-5 x the largest |logit| (8.5e-4 at 75), room for other
CPUs' kernels; the benchmark's own difference (random weights) must stay under 1e-4.

The three exports (the CLI with the demo checkpoint, avsegformer-tiny, the benchmark's) cost ~13 s each on
one core; the two subprocesses start when the module's fixtures do and run while the in-process export does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from model.errors import ConfigError  # noqa: E402
from model.variants import DEMO_CHECKPOINT  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ABS_TOL = 1e-4


def _tolerance(reference: torch.Tensor) -> float:
    return ABS_TOL + 1e-5 * float(reference.abs().max())


def _avs(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _max_diff(path: str | Path, model: torch.nn.Module, batch: int, size: int) -> tuple[float, torch.Tensor]:
    """Largest |ORT - torch| logit on random frames and embeddings of `batch` frames."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames, embedding = torch.rand(batch, 3, size, size), torch.randn(batch, 128)
    with torch.inference_mode():
        expected = model(frames, audio_embedding=embedding).mask_logits
    (got,) = session.run(["mask_logits"], {"frames": frames.numpy(), "audio_embedding": embedding.numpy()})
    assert got.shape == tuple(expected.shape)
    return float((torch.from_numpy(got) - expected).abs().max()), expected


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str] | Path]]:
    """The two long subprocesses, started together: they run on the second core while this process exports."""
    out = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    procs = {
        "export": _avs("export", "onnx", "--variant", "avesformer-tiny", "--checkpoint", str(DEMO_CHECKPOINT),
                       "--out", str(out), "--json"),
        "bench": _avs("bench", "model", "--variant", "avesformer-tiny", "--runtime", "onnxruntime",
                      "--batch-size", "2", "--size", "64", "--iters", "2", "--warmup", "1", "--json"),
    }
    yield {**procs, "out": out}
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_avsegformer_exports_and_ort_matches_torch(tmp_path: Path, cli_runs: dict) -> None:
    # First in the file and requests `cli_runs`: the subprocesses start, then this export overlaps with them.
    from model.build import build_model
    from model.onnx_export import export_onnx
    from model.variants import get_config

    cfg = get_config("avsegformer-tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    summary = export_onnx(model, cfg, tmp_path / "seg.onnx")
    assert model.training  # handed back in the mode it came in
    model.eval()
    assert summary["exporter"] == "dynamo"
    assert summary["outputs"] == {"mask_logits": ["N", 1, 128, 128]}
    for batch in (1, 3):
        diff, expected = _max_diff(summary["path"], model, batch, 128)
        assert diff < _tolerance(expected), f"batch {batch}: max |ORT - torch| = {diff}"


def test_cli_exports_the_demo_checkpoint_and_ort_matches_torch(cli_runs: dict) -> None:
    code, out, err = _finish(cli_runs["export"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1  # one JSON object on stdout: the exporter's progress lines must not leak there
    summary = json.loads(lines[0])
    assert summary["path"] == str(cli_runs["out"])
    assert (summary["variant"], summary["exporter"], summary["opset"]) == ("avesformer-tiny", "dynamo", 18)
    assert summary["inputs"] == {"frames": ["N", 3, 128, 128], "audio_embedding": ["N", 128]}
    assert summary["outputs"] == {"mask_logits": ["N", 1, 128, 128]}
    assert summary["checkpoint"] == str(DEMO_CHECKPOINT)
    assert summary["file_bytes"] > 4 * summary["params"]  # float32 weights in the one file, no external data
    assert not Path(str(cli_runs["out"]) + ".data").exists()

    from model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(DEMO_CHECKPOINT)
    in_graph = [p for name, p in model.named_parameters() if not name.startswith("audio_encoder.")]
    assert summary["params"] == sum(p.numel() for p in in_graph)
    torch.manual_seed(1)
    for batch in (1, 3):  # exported with a batch of 2: both sides of it prove the batch axis is symbolic
        diff, expected = _max_diff(cli_runs["out"], model, batch, 128)
        assert float(expected.abs().max()) > 1.0  # trained logits, not the near-zero ones of fresh weights
        assert diff < _tolerance(expected), f"batch {batch}: max |ORT - torch| = {diff}"


def test_bench_model_onnxruntime_json_contract(cli_runs: dict) -> None:
    code, out, err = _finish(cli_runs["bench"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    bench = json.loads(lines[0])
    assert (bench["variant"], bench["runtime"], bench["batch_size"], bench["size"], bench["device"]) == (
        "avesformer-tiny", "onnxruntime", 2, 64, "cpu")
    assert bench["onnxruntime"] == ort.__version__
    assert bench["threads"] >= 1
    assert bench["exporter"] == "dynamo"
    for runtime in ("torch", "onnxruntime"):
        fps, ms = bench[f"{runtime}_fps"], bench[f"{runtime}_ms_per_frame"]
        assert fps > 0
        assert abs(fps * ms - 1000) < 1.0  # two views of one median
    assert (bench["fps"], bench["ms_per_frame"]) == (bench["onnxruntime_fps"], bench["onnxruntime_ms_per_frame"])
    assert bench["speedup"] == pytest.approx(bench["onnxruntime_fps"] / bench["torch_fps"], rel=1e-2)
    assert 0 <= bench["max_abs_diff"] < ABS_TOL


def test_export_refuses_bad_arguments(tmp_path: Path) -> None:
    from model.build import build_model
    from model.onnx_export import export_onnx
    from model.variants import get_config

    cfg = get_config("avesformer-tiny")
    model = build_model(cfg)
    for kwargs, message in (({"size": 100}, "multiple of 32"), ({"batch_size": 1}, "batch_size"),
                            ({"opset": 13}, "opset")):
        with pytest.raises(ValueError, match=message):
            export_onnx(model, cfg, tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_refuses_a_checkpoint_of_another_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    code = main(["export", "onnx", "--variant", "avsegformer-tiny", "--checkpoint", str(DEMO_CHECKPOINT),
                 "--out", str(tmp_path / "x.onnx"), "--json"])
    assert code == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "invalid_config"
    assert "avesformer-tiny" in error["message"]
    assert not (tmp_path / "x.onnx").exists()


def test_cli_without_checkpoint_exports_seeded_random_weights(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """The random-weights branch, without paying for an export: the same seed gives the same weights."""
    import model.onnx_export
    from app.cli import main

    seen: list[dict[str, torch.Tensor]] = []

    def fake_export(model: torch.nn.Module, config: object, out_path: object, **kwargs: object) -> dict:
        seen.append(model.state_dict())
        return {"path": str(out_path), "variant": config.variant, "params": 0, "opset": kwargs["opset"],
                "exporter": "none", "file_bytes": 0, "inputs": {}, "outputs": {}}

    monkeypatch.setattr(model.onnx_export, "export_onnx", fake_export)
    for _ in range(2):
        assert main(["export", "onnx", "--variant", "avesformer-tiny", "--out", str(tmp_path / "x.onnx"),
                     "--opset", "19", "--seed", "3"]) == 0
    assert seen[0].keys() == seen[1].keys()
    assert all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0])


def test_export_failure_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """When both exporters fail the caller gets one ConfigError naming both causes."""
    from model.build import build_model
    from model.onnx_export import export_onnx
    from model.variants import get_config

    def broken(*args: object, dynamo: bool = True, **kwargs: object) -> None:
        raise RuntimeError(f"unsupported op ({'dynamo' if dynamo else 'torchscript'})")

    monkeypatch.setattr(torch.onnx, "export", broken)
    cfg = get_config("avesformer-tiny")
    with pytest.raises(ConfigError, match=r"dynamo exporter: RuntimeError: unsupported op \(dynamo\).*"
                                          r"TorchScript exporter: RuntimeError: unsupported op \(torchscript\)"):
        export_onnx(build_model(cfg), cfg, tmp_path / "x.onnx")
