"""A run folder's checkpoints: orbax saves, verified by digest, damage survived.

`output/checkpoints/<step>/` are orbax checkpoints (params, optimizer state, step).
After each save the SHA-256 of every file is recorded in
`output/checkpoint_digests.json`, because orbax restores a checkpoint whose bytes
were corrupted without complaint. Resuming takes the newest step whose files match
their digests and that orbax restores; a damaged newer step (truncated, corrupted,
a file missing) is skipped with a `CheckpointWarning` that names it, and when no
step is intact `CheckpointError` says which folder to remove. Skipped steps are
deleted, so the run writes them again. `output/run.json` records the parameters' shapes
and the run's settings (the config fields that decide its trajectory: seed, batch
shape, learning rate, ...), so a folder reused for a different model, or a resume under
other settings, is refused before anything is restored.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any, Dict, Optional

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

DIGESTS = "checkpoint_digests.json"
RUN = "run.json"


class CheckpointError(ValueError):
    """No checkpoint of the run folder can be resumed from, the folder holds another
    run (another model's, or under other settings), or a stop comes before its step."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped."""


def _file_digests(folder: str) -> Dict[str, str]:
    """relative path -> SHA-256 of every file under `folder`."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
            digests[os.path.relpath(path, folder)] = sha.hexdigest()
    return digests


def _shapes(tree) -> Dict[str, list]:
    """Leaf path -> [shape, dtype] of every leaf (what makes two runs the same model)."""
    return {jax.tree_util.keystr(path): [list(x.shape), str(x.dtype)]
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _differences(recorded: dict, current: dict) -> list:
    """The keys whose values differ between two flat records."""
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:  # an interrupted write: treated as absent
        return None


def _write_json(path: str, values: dict) -> None:
    """Atomically (a crash leaves the old file or the new one)."""
    with open(path + ".tmp", "w") as f:
        json.dump(values, f, indent=1)
    os.replace(path + ".tmp", path)


class RunCheckpoints:
    """The checkpoints of one run folder (every process opens it; process 0 writes
    the bookkeeping files)."""

    def __init__(self, output: str, params, settings: Optional[dict] = None):
        self.output = output
        self.folder = os.path.abspath(os.path.join(output, "checkpoints"))
        self.shapes, self.settings = _shapes(params), settings
        self.manager = ocp.CheckpointManager(
            self.folder, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        recorded = _read_json(os.path.join(output, RUN))
        if not self.manager.all_steps() or recorded is None:
            return
        differ = _differences(recorded.get("params", {}), self.shapes)
        if differ:
            raise CheckpointError(
                f"{output} holds a run of a different model (parameters {differ[:3]} "
                f"differ); give another output folder or remove it")
        theirs = recorded.get("settings")
        differ = [] if settings is None or theirs is None else _differences(theirs, settings)
        if differ:
            changes = ", ".join(f"{k}: {theirs.get(k)!r} -> {settings.get(k)!r}"
                                for k in differ[:3])
            raise CheckpointError(
                f"{output} holds a run with other settings ({changes}); a resumed run "
                f"must be the uninterrupted one: resume it with its own settings or give "
                f"another output folder")

    def _digests(self) -> dict:
        """The recorded digests of the steps that still exist."""
        kept = {str(s) for s in self.manager.all_steps()}
        recorded = _read_json(os.path.join(self.output, DIGESTS)) or {}
        return {step: files for step, files in recorded.items() if step in kept}

    def _write_digests(self, digests: dict) -> None:
        if jax.process_index() == 0:
            _write_json(os.path.join(self.output, DIGESTS), digests)

    def _damage(self, step: int, digests: dict) -> Optional[str]:
        """What is wrong with step's files (None: they match, or none were recorded)."""
        recorded = digests.get(str(step))
        if recorded is None:
            return None
        found = _file_digests(os.path.join(self.folder, str(step)))
        missing = sorted(set(recorded) - set(found))
        if missing:
            return f"missing {missing[0]}"
        changed = sorted(k for k in recorded if found[k] != recorded[k])
        return f"{changed[0]} does not match its digest" if changed else None

    def restore(self, state) -> Optional[Any]:
        """The newest intact checkpoint (restored like `state`), or None when the run
        has none yet."""
        digests = self._digests()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        damaged, bad_steps = [], []
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = self._damage(step, digests)
            if problem is None:
                try:
                    restored = self.manager.restore(step,
                                                    args=ocp.args.StandardRestore(abstract))
                except Exception as err:  # orbax and tensorstore raise many kinds
                    problem = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            if problem is None:
                if damaged:
                    warnings.warn(f"skipped damaged checkpoint(s) in {self.folder}: "
                                  f"{'; '.join(damaged)}; resuming from step {step}",
                                  CheckpointWarning, stacklevel=3)
                    self._forget(bad_steps, digests)
                return restored
            damaged.append(f"step {step} ({problem})")
            bad_steps.append(step)
        if damaged:
            raise CheckpointError(f"no intact checkpoint in {self.folder} "
                                  f"({'; '.join(damaged)}); remove it to start over")
        return None

    def _forget(self, steps, digests: dict) -> None:
        """Deletes damaged steps (orbax would not save a step it believes it has)."""
        if jax.process_index() == 0:
            for step in steps:
                self.manager.delete(step)
            self._write_digests({k: v for k, v in digests.items()
                                 if int(k) not in steps})
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("sdjax checkpoints: damaged steps deleted")
        self.manager.reload()

    def save(self, step: int, state) -> None:
        """Saves `state` as `step`, waits for it, and records its files' digests, the
        parameters' shapes and the run's settings."""
        if not self.manager.save(step, args=ocp.args.StandardSave(state)):
            raise CheckpointError(f"orbax declined to save step {step} in {self.folder} "
                                  f"(it has steps {self.manager.all_steps()})")
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            _write_json(os.path.join(self.output, RUN),
                        {"params": self.shapes, "settings": self.settings})
            digests = self._digests()
            digests[str(step)] = _file_digests(os.path.join(self.folder, str(step)))
            self._write_digests(digests)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
