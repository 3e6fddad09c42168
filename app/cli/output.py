"""How every command ends: one JSON object with `--json`, else a line for people; errors with stable codes.

Torch-free: mapping an exception to its code looks at modules only when they are already loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

EXIT_ERROR = 2
"""Exit status of a refused input or a failed command (`avs: error [code]: message` on stderr)."""


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")


def emit(args: argparse.Namespace, result: Any, text: Callable[[], str]) -> int:
    """Every command's ending: one JSON object with --json, else a human-readable line."""
    if getattr(args, "json", False):
        print_json(result)
    else:
        print(text())
    return 0


def error_code(exc: Exception) -> str | None:
    """Stable codes for errors a user can fix; None for bugs (which keep their traceback)."""
    if "worker.core.errors" in sys.modules:
        from worker.core.errors import MediaError

        if isinstance(exc, MediaError):
            return str(exc.code)
    for module, name in (("worker.core.live_sources", "SourceRefused"), ("worker.live.session", "SessionError"),
                         ("app.cli.live_client", "LiveRefused"), ("worker.core.private_redis", "PrivateRedisError"),
                         ("app.cli.supervisor", "MetricsDirError"), ("worker.core.model_card", "CardError"),
                         ("worker.core.objects.errors", "ObjectStoreError"),
                         ("worker.core.objects.swift_server", "SwiftServerError")):
        if module in sys.modules and isinstance(exc, getattr(sys.modules[module], name)):
            return str(exc.code)  # type: ignore[attr-defined]
    if "worker.core.settings" in sys.modules:
        from worker.core.settings import SettingsError

        if isinstance(exc, SettingsError):
            return "invalid_settings"
    if "model.errors" in sys.modules:
        from model import errors

        codes = {errors.ConfigError: "invalid_config", errors.CheckpointError: "bad_checkpoint",
                 errors.WeightImportError: "bad_weights", errors.DatasetError: "bad_dataset"}
        for cls, code in codes.items():
            if isinstance(exc, cls):
                return code
    if type(exc) is ValueError:
        return "invalid_argument"
    return None


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, plus "(default: X)" after every option whose default says something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        says_nothing = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if action.option_strings and "%(default)" not in text and not says_nothing and not action.required:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """`avs`'s parsers: `HelpFormatter` by default, inherited by every subcommand's parser (argparse builds
    subparsers with the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
