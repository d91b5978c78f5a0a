"""run_folder.Replacement: one way to replace a run folder for train.py --force and the task scripts'
--overwrite_output_dir. Every state a kill can leave is made by hand here and settled by recover(); the
scripts' own tests (test_nothing_lost.py, test_glue_trust.py, test_silent_faults.py) take the same paths
through real runs."""

import pytest

from core.run_folder import OLD_SUFFIXES, Replacement


def contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(folder, name, committed=False):
    """A run folder holding `name`'s files; `committed`: it reached its commit point (a file `done`)."""
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "weights").write_text(name)
    if committed:
        (folder / "done").write_text(name)
    return contents(folder)


def replacement(folder):
    return Replacement(folder, lambda f: (f / "done").exists(), "finished", "--flag")


def hidden(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


def test_begin_then_commit_keeps_only_the_new_run(tmp_path):
    folder = tmp_path / "run"
    run(folder, "old", committed=True)
    r = replacement(folder)
    r.begin()
    assert r.begun and not folder.exists() and contents(r.aside)["sub/weights"] == "old"
    new = run(folder, "new", committed=True)
    r.commit()
    r.commit()  # twice is harmless
    assert contents(folder) == new and hidden(tmp_path) == []


def test_rollback_puts_the_old_run_back(tmp_path):
    folder = tmp_path / "run"
    old = run(folder, "old", committed=True)
    r = replacement(folder)
    r.begin()
    run(folder, "new")
    assert r.rollback() and contents(folder) == old and hidden(tmp_path) == []


def test_rollback_without_a_begin_removes_the_new_run_only(tmp_path):
    """A task run that diverged, with no old run to put back: nothing of it is left."""
    folder = tmp_path / "run"
    run(folder, "new")
    assert not replacement(folder).rollback() and not folder.exists() and hidden(tmp_path) == []


def test_begin_on_no_folder_is_no_replacement(tmp_path):
    r = replacement(tmp_path / "run")
    r.begin()
    assert not r.begun and r.pending() is None and r.recover() is None


@pytest.mark.parametrize("suffix", [".replaced", *OLD_SUFFIXES])
@pytest.mark.parametrize("new_state", ["committed", "partial", "absent"])
def test_recover_settles_a_kill_by_one_rule(tmp_path, suffix, new_state):
    """Killed between begin() and commit()/rollback(): a new run that reached its commit point is kept, else
    the old run comes back; the names earlier versions gave the old run are recovered too."""
    folder = tmp_path / "run"
    old = run(tmp_path / f".run{suffix}", "old", committed=True)
    new = run(folder, "new", committed=True) if new_state == "committed" else None
    if new_state == "partial":
        run(folder, "new")
    r = replacement(folder)
    assert r.pending() == ("keep" if new_state == "committed" else "put back")
    note = r.recover()
    if new_state == "committed":
        assert note == f"{folder}: its replacement by --flag had finished; the old run is removed"
        assert contents(folder) == new
    else:
        assert note == f"{folder}: put back; its replacement by --flag was stopped before it had finished"
        assert contents(folder) == old
    assert hidden(tmp_path) == [] and r.pending() is None and r.recover() is None


def test_a_kill_during_a_deletion_is_finished_by_the_next_command(tmp_path):
    """A removal renames first, so a kill midway leaves `.run.deleting`, never half a run under `run`."""
    folder = tmp_path / "run"
    new = run(folder, "new", committed=True)
    r = replacement(folder)
    run(r.deleting, "half of the old run")
    assert r.pending() is None  # nothing to decide ...
    assert r.recover() is None and hidden(tmp_path) == [] and contents(folder) == new  # ... but it is cleared
