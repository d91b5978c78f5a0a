"""Replacing a run folder without ever losing a run: train.py --force, run_glue.py and run_qa.py
--overwrite_output_dir.

A replacement never deletes first. `begin()` moves the old run aside (`.NAME.replaced`, beside the folder);
the new run is made in its place; at the caller's commit point (train.py: the new run's first checkpoint; a
task run: its results.json) `commit()` removes the old run. A new run that fails first is undone by
`rollback()`, which puts the old run back.

A command killed outright (SIGKILL, a power cut) gets no chance to do either, so every command starts with
`recover()`, under the folder's lock, and settles what a killed one left by one rule: a new run that reached
its commit point is kept and the old one removed; otherwise the new run is removed and the old one put back.

Folders are removed in two steps: renamed to `.NAME.deleting` (atomic), then deleted file by file; a kill
during the deletion never leaves half a run where a whole one is looked for.
"""

import os
import shutil
from pathlib import Path

SUFFIX = ".replaced"  # the old run, beside the folder, while its replacement runs
OLD_SUFFIXES = (".replaced-by-force", ".replaced-by-overwrite")  # what earlier versions named it: still recovered


class Replacement:
    """The replacement of the run in `folder`. `committed(folder)`: whether the run there has reached its
    commit point, which `point` words for messages ("written its first checkpoint", "finished"); `flag` is the
    command's flag that replaces runs, also for messages."""

    def __init__(self, folder, committed, point, flag):
        self.folder, self.committed, self.point, self.flag = Path(folder), committed, point, flag
        self.begun = False  # this process moved the old run aside

    @property
    def aside(self):
        return self.folder.parent / f".{self.folder.name}{SUFFIX}"

    @property
    def deleting(self):
        return self.folder.parent / f".{self.folder.name}.deleting"

    def leftover(self):
        """The old run a killed replacement left aside (under this or an earlier version's name), or None."""
        names = (SUFFIX, *OLD_SUFFIXES)
        return next((p for p in (self.folder.parent / f".{self.folder.name}{s}" for s in names) if p.is_dir()), None)

    def pending(self):
        """What recover() would do, read-only: None (nothing left over), "keep" (the new run reached its commit
        point: the old one goes) or "put back" (the new run goes, the old one comes back)."""
        return self._state()[1]

    def recover(self):
        """Settle what a killed command left here (main process, under the folder's lock). Returns a one-line
        message of what was done, or None when there was nothing to do."""
        self._remove(self.deleting)  # a deletion killed midway
        old, what = self._state()
        if what == "keep":
            self._remove(old)
            return f"{self.folder}: its replacement by {self.flag} had {self.point}; the old run is removed"
        if what == "put back":
            self._remove(self.folder)
            old.rename(self.folder)
            return f"{self.folder}: put back; its replacement by {self.flag} was stopped before it had {self.point}"
        return None

    def _state(self):
        old = self.leftover()
        if old is None:
            return None, None
        return old, "keep" if self.folder.is_dir() and self.committed(self.folder) else "put back"

    def begin(self):
        """Move the old run aside (call recover() first); the caller makes the new run in its place."""
        if self.folder.exists():
            self.folder.rename(self.aside)
            self.begun = True

    def commit(self):
        """The new run reached its commit point: remove the old one. Safe to call again."""
        if self.begun:
            self._remove(self.aside)
            self.begun = False

    def rollback(self):
        """The new run failed before its commit point: remove it, and put the old run back if this process moved
        one aside. Returns whether an old run was put back."""
        self._remove(self.folder)
        if not self.begun:
            return False
        self.aside.rename(self.folder)
        self.begun = False
        return True

    def _remove(self, path):
        if path is None or not path.exists():
            return
        if path != self.deleting:
            if self.deleting.exists():
                shutil.rmtree(self.deleting)
            os.replace(path, self.deleting)
        shutil.rmtree(self.deleting)
