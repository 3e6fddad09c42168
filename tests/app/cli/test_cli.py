"""The `avs` console script, run as a real subprocess: JSON contracts and error codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

AVS = [str(Path(sys.executable).with_name("avs"))]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AVS, *args], capture_output=True, text=True, timeout=300, check=False)


def test_model_list_names_every_required_variant() -> None:
    result = _run("model", "list", "--json")
    assert result.returncode == 0, result.stderr
    names = {row["variant"] for row in json.loads(result.stdout)["variants"]}
    required = {"avesformer-pvt_v2_b0", "avesformer-pvt_v2_b1", "avesformer-pvt_v2_b2", "avesformer-pvt_v2_b5",
                "avesformer-r50", "avsegformer-pvt_v2_b0", "avsegformer-pvt_v2_b2", "avsegformer-pvt_v2_b5",
                "avesformer-tiny"}
    assert required <= names


def test_model_info_json_contract() -> None:
    result = _run("model", "info", "--variant", "avesformer-pvt_v2_b0", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info) == {"variant", "params_total", "params", "input_size", "num_classes"}
    assert set(info["params"]) == {"visual", "audio", "decoder"}
    assert sum(info["params"].values()) == info["params_total"]
    assert info["params"]["audio"] == 72_141_184
    assert info["params"]["visual"] == 3_409_760  # timm's PVT-v2-b0 without its classifier
    assert (info["input_size"], info["num_classes"]) == (224, 1)


def test_model_info_semantic_head() -> None:
    result = _run("model", "info", "--variant", "avesformer-tiny", "--num-classes", "71", "--json")
    assert json.loads(result.stdout)["num_classes"] == 71


def test_bench_model_json_contract() -> None:
    result = _run("bench", "model", "--variant", "avesformer-tiny", "--batch-size", "2", "--size", "64",
                  "--iters", "2", "--warmup", "1", "--json", "--breakdown")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object on stdout, nothing else
    bench = json.loads(lines[0])
    assert {"variant", "fps", "ms_per_frame", "batch_size", "size", "device", "threads"} <= set(bench)
    assert (bench["variant"], bench["batch_size"], bench["size"], bench["device"]) == ("avesformer-tiny", 2, 64, "cpu")
    assert bench["fps"] > 0
    assert abs(bench["fps"] * bench["ms_per_frame"] - 1000) < 1.0  # the two views of one median agree
    assert set(bench["ms_per_frame_breakdown"]) == {"visual", "audio", "decoder"}


def test_unknown_variant_is_a_clear_error() -> None:
    result = _run("model", "info", "--variant", "avesformer-b9", "--json")
    assert result.returncode == 2
    assert "[invalid_config]" in result.stderr
    assert "avesformer-tiny" in result.stderr  # the message lists what exists
    # with --json the error is also the one JSON object on stdout
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "invalid_config"
    assert "avesformer-b9" in error["message"]
    assert "Traceback" not in result.stderr


def test_every_option_of_every_command_says_what_it_is() -> None:
    import argparse

    from app.cli import build_parser

    def silent(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from silent(child, f"{path} {name}")
            elif not action.help:
                yield f"{path} {action.dest}"

    assert list(silent(build_parser(), "avs")) == []
    text = _run("train", "--help").stdout
    assert "passes over the training split (default: 10)" in " ".join(text.split())


def test_eval_names_the_split_it_looked_for(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = _run("synth", "--out", str(data), "--subset", "s4", "--videos", "2", "--size", "64", "--no-mp4")
    assert made.returncode == 0, made.stderr
    result = _run("eval", "--data", str(data), "--subset", "s4", "--split", "test", "--json")
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "bad_dataset"
    assert "no clip of split 'test'" in error["message"]
    assert "train (2 clips)" in error["message"]
    missing = _run("eval", "--data", str(tmp_path / "nowhere"), "--subset", "ms3", "--json")
    assert json.loads(missing.stdout)["error"]["code"] == "bad_dataset"
    assert "ms3_meta_data.csv" in json.loads(missing.stdout)["error"]["message"]
