"""`make distill-check`: the evidence for `avs distill` (issue #22), end to end with the real CLI.

1. `avs synth`: teacher training clips (seed 11, labelled), unlabelled clips for distillation (seed 12, mp4
   only is read) and held-out clips (seed 14: mp4 for agreement, the AVSBench layout for ground truth).
2. `avs train`: an AVSegFormer-tiny teacher, started from the shipped demo checkpoint's shared tensors.
3. `avs distill`: AVESFormer-tiny from that teacher on the unlabelled mp4s (labels never read), reported
   against the teacher and the held-out ground truth, with the silence / shuffled-sound checks and frames/s.
4. `avs distill` again with the same arguments and more epochs: the teacher is not run (cache reused).

Writes `<results>/distill-check.json` (every number, the commands, wall time per stage) and exits 1 when the
targets are missed: student mIoU >= 0.95 x teacher's, student silence drop >= 0.4.

    python scripts/distill_check.py --work runs/distill-check --results docs/distill
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "model" / "weights" / "avesformer-tiny-synthetic-s4.safetensors"


def avs(*args: str) -> tuple[dict, float]:
    """Run `python -m app.cli ARGS --json`; return its JSON and the seconds it took."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "app.cli", *args, "--json"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout), round(time.perf_counter() - started, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/distill-check")
    p.add_argument("--results", default="docs/distill")
    p.add_argument("--teacher-clips", type=int, default=300)
    p.add_argument("--unlabelled-clips", type=int, default=60)
    p.add_argument("--heldout-clips", type=int, default=30)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--student-epochs", type=int, default=6)
    args = p.parse_args()
    work, results = Path(args.work), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stages: dict[str, float] = {}
    for name, seed, count, split, mp4 in (("teacher-data", 11, args.teacher_clips, "train", False),
                                           ("unlabelled", 12, args.unlabelled_clips, "train", True),
                                           ("heldout", 14, args.heldout_clips, "test", True)):
        if not (work / name).is_dir():
            _, stages[f"synth {name}"] = avs("synth", "--out", str(work / name), "--subset", "s4", "--videos",
                                             str(count), "--seed", str(seed), "--size", "128", "--split", split,
                                             *([] if mp4 else ["--no-mp4"]))
    teacher = work / "teacher.safetensors"
    teacher_cmd = ["train", "--data", str(work / "teacher-data"), "--subset", "s4", "--variant", "avsegformer-tiny",
                   "--init", str(DEMO), "--out", str(teacher), "--epochs", str(args.teacher_epochs),
                   "--batch-size", "4", "--lr", "3e-4", "--tensorboard", ""]
    teacher_summary, stages["teacher training"] = avs(*teacher_cmd)
    # a rerun resumes the finished teacher (no step): its training time is the log's last step
    log = [json.loads(line) for line in Path(f"{teacher}.log.jsonl").read_text().splitlines()]
    teacher_summary["seconds_logged"] = log[-1]["seconds"]
    student = work / "student.safetensors"
    distill_cmd = ["distill", "--teacher", str(teacher), "--videos", str(work / "unlabelled" / "mp4"),
                   "--eval-videos", str(work / "heldout" / "mp4"), "--eval-data", str(work / "heldout"),
                   "--eval-subset", "s4", "--variant", "avesformer-tiny", "--out", str(student),
                   "--epochs", str(args.student_epochs), "--batch-size", "8", "--lr", "3e-4", "--no-resume",
                   "--tensorboard", ""]
    summary, stages["distill"] = avs(*distill_cmd)
    # the same videos and teacher, another student: argparse keeps the last of a repeated flag
    again, stages["distill again (cache)"] = avs(*distill_cmd, "--cache", f"{student}.cache", "--epochs", "1",
                                                "--max-steps", "1", "--no-fps",
                                                "--out", str(work / "student-again.safetensors"))
    gt = summary["ground_truth"]
    checks = {"student_over_teacher_miou": gt["student_over_teacher"],
              "student_silence_drop": gt["student"]["silence_drop"],
              "teacher_silence_drop": gt["teacher"]["silence_drop"],
              "second_run_teacher_frames": again["labelling"]["frames_labelled_now"],
              "target_met": gt["student_over_teacher"] >= 0.95 and gt["student"]["silence_drop"] >= 0.4
              and again["labelling"]["frames_labelled_now"] == 0}
    report = {"checks": checks, "stage_seconds": stages, "wall_seconds": round(time.perf_counter() - started, 1),
              "commands": {"teacher": "avs " + " ".join(teacher_cmd), "distill": "avs " + " ".join(distill_cmd)},
              "teacher_training": {k: teacher_summary.get(k) for k in ("steps", "seconds", "seconds_logged",
                                                                        "final_loss", "train_clips")},
              "distill": summary, "second_run_labelling": again["labelling"], "cpu_count": os.cpu_count()}
    results.mkdir(parents=True, exist_ok=True)
    (results / "distill-check.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(json.dumps(checks))
    return 0 if checks["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
