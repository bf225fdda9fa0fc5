"""A run folder keeps its history: the first attempt's recipe is ``config.yaml``; each
attempt (first run or resume) gets its own log version holding its resolved recipe and
metrics; resuming with a changed recipe is refused unless asked for; a fresh start
moves the old folder aside instead of deleting it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nargen.config import ConfigError

RESUMABLE_CHANGES = {
    "trainer.max_steps", "trainer.max_epochs", "trainer.max_time_minutes", "trainer.threads",
    "trainer.progress_bar", "trainer.log_every_n_steps", "trainer.fresh",
    "trainer.allow_config_change", "trainer.keep_last", "trainer.val_every_steps",
    "trainer.checkpoint_every_steps", "trainer.tensorboard", "trainer.keep_best",
    "trainer.init_from", "trainer.compile", "eval.average_best",
}
"""Keys a resumed run may change without asking: its budget, threads, how often it
logs, validates and saves, whether it compiles, and where a new run would take its core
from (a resumed run reads its own last checkpoint, never ``init_from``)."""


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved recipes."""
    a, b = flatten(before), flatten(after)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def check_resume(run_dir: Path, resolved: dict[str, Any], allow_change: bool) -> None:
    """Refuse to resume ``run_dir`` with a recipe that differs from its ``config.yaml``
    in keys outside ``RESUMABLE_CHANGES`` (unless ``allow_change``)."""
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        return
    changed = [k for k in changed_keys(yaml.safe_load(stored.read_text()) or {}, resolved)
               if k not in RESUMABLE_CHANGES]
    if changed and not allow_change:
        raise ConfigError(
            f"{run_dir} was started with another recipe; changed: {', '.join(changed)}. "
            "Resume with --trainer.allow_config_change true, or start over with --trainer.fresh true"
        )


def move_aside(run_dir: Path) -> Path | None:
    """Rename an existing, non-empty ``run_dir`` to the first free ``.previous-N``."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    n = 1
    while (target := run_dir.with_name(f"{run_dir.name}.previous-{n}")).exists():
        n += 1
    run_dir.rename(target)
    return target
