"""Two commands on one folder: the second is refused in one line and loses nothing (run_glue.py, train.py); a kill
while an old run is removed keeps the finished new one."""


import pytest

import train
from conftest import input_error, run_main
from glue_helpers import custom_args
from pipeline_helpers import binarize, count, train_argv, train_error, vocab_size
from scripts import run_glue

# -- 3. two commands on one folder ----------------------------------------------------------------------------


@pytest.fixture
def held_lock():
    """Another process holding a folder's lock, as a second command running there does."""
    import subprocess
    import sys

    procs = []

    def hold(lock_file):
        code = ("import sys, time\nfrom core import files\n"
                "with files.folder_lock(sys.argv[1], 'x'):\n"
                "    print('locked', flush=True)\n"
                "    time.sleep(120)\n")
        proc = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_two_glue_commands_at_once_into_one_folder(tmp_path, teacher, custom_task, held_lock):
    """A second run_glue.py into an output folder in use is refused in one line (plain or with
    --overwrite_output_dir), and loses nothing there; once the first ends, it runs."""

    args = custom_args(teacher, custom_task, tmp_path / "out")
    run_main(run_glue.main, *args, check=True)
    results = tmp_path / "out" / "custom" / "lr2e-05_seed42" / "results.json"
    before = results.read_text()
    # a mark only the old run has: its "finished" time can equal the new run's within one second
    (results.parent / "old-run-mark").write_text("")
    holder = held_lock(tmp_path / "out" / ".lock")
    for extra in ([], ["--overwrite_output_dir"], ["--seed", 7]):
        line = input_error(run_glue.main, [*args, *extra])
        assert f"--output_dir {tmp_path / 'out'} is in use by another command (pid {holder.pid} on" in line
    assert results.read_text() == before and not list((tmp_path / "out" / "custom").glob(".*"))
    holder.kill()
    holder.wait()
    assert (results.parent / "old-run-mark").exists()
    run_main(run_glue.main, *args, "--overwrite_output_dir", check=True)
    assert results.exists() and not (results.parent / "old-run-mark").exists()


def test_a_kill_while_the_old_run_is_removed_keeps_the_finished_new_run(tmp_path, teacher, custom_task):
    """--overwrite_output_dir removes the old run after the new one has its results; a kill during that
    removal leaves the new run and part of the old one: the next command keeps the new run."""

    args = custom_args(teacher, custom_task, tmp_path / "out")
    run_main(run_glue.main, *args, check=True)
    run_dir = tmp_path / "out" / "custom" / "lr2e-05_seed42"
    new = (run_dir / "results.json").read_text()
    aside = run_dir.parent / f".{run_dir.name}.replaced"
    aside.mkdir()  # what the kill left of the old run: a few files, no results
    (aside / "settings.json").write_text("{}")
    deleting = run_dir.parent / f".{run_dir.name}.deleting"  # and of an earlier removal, half done
    (deleting / "checkpoint-1").mkdir(parents=True)
    proc = run_main(run_glue.main, *args, check=True)
    assert "had finished; the old run is removed" in proc.stdout
    assert (run_dir / "results.json").read_text() == new and not aside.exists() and not deleting.exists()
    # variant: the kill came before the new run had its results: the old run is put back, as before
    old_results = new
    run_dir.rename(aside)
    (run_dir / "checkpoint-1").mkdir(parents=True)
    proc = run_main(run_glue.main, *args, check=True)
    assert "put back" in proc.stdout and (run_dir / "results.json").read_text() == old_results


def test_two_training_commands_at_once_into_one_run_folder(tmp_path, corpus, tokenizer_dir, teacher_dir, held_lock):
    train_file, _ = binarize(tmp_path, corpus, tokenizer_dir)
    counts = count(train_file, tmp_path / "counts.pickle", vocab_size(tokenizer_dir))
    argv = train_argv(tmp_path, train_file, counts, teacher_dir, tokenizer_dir)
    holder = held_lock(tmp_path / ".run.lock")  # train.py's lock sits beside the folder: --force moves the folder
    line = train_error(argv)
    assert f"the run folder {tmp_path / 'run'} is in use by another command (pid {holder.pid} on" in line
    assert not (tmp_path / "run").exists()
    holder.kill()
    holder.wait()  # the lock goes with its process, however it ends
    run_main(train.main, *argv, "--stop_after_iter", 2, check=True)
    assert (tmp_path / "run" / "parameters.json").is_file()
