"""Requirement lines of one of the project's extras, read from pyproject.toml (stdlib only).

The images install their dependencies in a layer of their own, before the project's source is copied,
so that a code change does not reinstall torch. That layer needs the requirement list without the
source tree; this script prints it, expanding the self-reference `avesformer[api]` of the `worker` extra:

    python docker/requirements.py api      # base dependencies + [api]
    python docker/requirements.py worker   # base dependencies + [worker] (which includes [api])

`--lock` re-resolves `.[worker]` with pip (dry run, nothing installed) and rewrites
`docker/constraints.txt`, the exact versions both images are built with.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = Path(__file__).resolve().parent / "constraints.txt"
_SELF_REF = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*\[([^\]]+)\]\s*$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path, extra: str) -> list[str]:
    """Base dependencies plus the extra's, with references to this project's own extras expanded."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = _norm(project["name"])
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()

    def add(which: str) -> None:
        if which in seen:
            return
        if which not in extras:
            raise SystemExit(f"pyproject.toml has no extra named {which!r} (have: {', '.join(sorted(extras))})")
        seen.add(which)
        for req in extras[which]:
            match = _SELF_REF.match(req)
            if match and _norm(match.group(1)) == name:
                for sub in match.group(2).split(","):
                    add(sub.strip())
            elif req not in out:
                out.append(req)

    add(extra)
    return out


def lock(extra: str = "worker") -> str:
    """Resolve `.[extra]` with pip (dry run) and return the constraints file text."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), f"{ROOT}[{extra}]"], check=True)
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    pins = sorted((i["metadata"]["name"], i["metadata"]["version"]) for i in installs)
    lines = [f"{n}=={v}" for n, v in pins if _norm(n) != "avesformer"]
    header = ("# Exact versions the API and worker images are built with (pip install -c docker/constraints.txt).\n"
              "# The resolution of `.[worker]` (a superset of `.[api]`) for CPython 3.11 on linux/x86_64.\n"
              "# Regenerate after changing pyproject.toml: python docker/requirements.py --lock\n")
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra", nargs="?", help="api or worker")
    parser.add_argument("--pyproject", type=Path, default=None, help="default: ./pyproject.toml, else the repo's")
    parser.add_argument("--lock", action="store_true", help="rewrite docker/constraints.txt from a fresh resolution")
    args = parser.parse_args(argv)
    if args.lock:
        CONSTRAINTS.write_text(lock(args.extra or "worker"), encoding="utf-8")
        print(f"wrote {CONSTRAINTS}")
        return 0
    if not args.extra:
        parser.error("name an extra (api or worker), or pass --lock")
    pyproject = args.pyproject or Path("pyproject.toml")
    if not pyproject.exists():
        pyproject = ROOT / "pyproject.toml"
    sys.stdout.write("\n".join(requirements(pyproject, args.extra)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
