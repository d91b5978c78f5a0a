"""Which precision a run uses, decided once: what was asked (--fp16, --bf16), what runs, and why.

One decision for every trainer: train.py's Distiller (`Precision.decide`) and the Trainer of run_glue.py and
run_qa.py (`Precision.for_trainer`). fp16 needs CUDA; bf16 on a CPU needs native bf16, measured by
`cpu_bf16_is_fast()` (emulated bf16 is ~11x slower than fp32); otherwise the run is fp32, says why, and records
both the request and the decision. Everything that depends on it reads the decision: the autocast dtype of the
forwards (and of a teacher's pass), the attention implementation, the GradScaler (fp16 only), the dtype the frozen
teacher is stored in, and whether non-finite losses are an error (under fp16 an overflow is the scaler's
business: the step is skipped and counted).
"""

import contextlib
import dataclasses
import functools
import os
import platform
import time

import torch

from core.errors import InputError

# The attention implementation (transformers' attn_implementation) a precision runs with, by device type;
# absent: the model's own (SDPA, PyTorch choosing its kernel). Measured with benchmarks/bench_attention.py
# (docs/benchmarks.md, "The attention kernel"): on an AMX Xeon in bf16, transformers' eager attention beat
# SDPA's flash and math kernels by 6-15% a step at MiniLM's and BERT-base's shapes; in fp32 none won by much.
ATTENTION = {("cpu", "bf16"): "eager"}


def attention_for(device_type, used):
    """The attn_implementation for precision `used` ("fp32", "bf16", "fp16") on `device_type`, or None."""
    return ATTENTION.get((device_type, used))


def use_attention(model, device_type, used):
    """Switch `model` (a transformers model) to attention_for(device_type, used), if that names one."""
    impl = attention_for(device_type, used)
    if impl is not None and model.config._attn_implementation != impl:
        model.set_attn_implementation(impl)
    return model


def cpu_description():
    """The CPU's model name and the instruction set PyTorch runs on it, e.g. 'Intel Xeon ... (AVX512)'."""
    name = None
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()})"


BF16_PROBE = (128, 384, 1536)  # a BERT-small FFN matmul: rows x width x FFN width
BF16_FAST_RATIO = 0.8  # bf16 counts as fast when it takes at most this share of fp32's time


PROBE_PAIRS = 7  # fp32 and bf16 timed in turns, this many of each: a load that comes and goes hits both alike
PROBE_ENV = "DISTIL_CPU_BF16"  # "fast" or "slow": the answer without measuring (tests, and CPUs a user knows)


def _probe_inputs(dtype):
    rows, width, ffn = BF16_PROBE
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(rows, width, generator=generator), torch.randn(width, ffn, generator=generator)
    x, y = x.to(dtype), y.to(dtype)
    x @ y  # the first call: oneDNN's kernel choice, page faults
    return x, y


def _timed(x, y):
    start = time.perf_counter()
    x @ y
    return time.perf_counter() - start


def _probe_pairs(n=PROBE_PAIRS):
    """(fp32 seconds, bf16 seconds) of each of `n` runs of the probe matmul, the two dtypes in turns."""
    fp32, bf16 = _probe_inputs(torch.float32), _probe_inputs(torch.bfloat16)
    for _ in range(n):
        yield _timed(*fp32), _timed(*bf16)


def bf16_pays(pairs):
    """Whether bf16 pays, from (fp32 seconds, bf16 seconds) pairs: the fastest bf16 run against the fastest fp32
    run (a busy machine only ever slows a run down, so the minimum is the steadiest figure of each). Stops early,
    False, once bf16's best of two or more runs is over 3x fp32's (emulated bf16, ~0.3 s a run: no need to wait
    for more of it)."""
    best32 = best16 = float("inf")
    for n, (seconds32, seconds16) in enumerate(pairs, 1):
        best32, best16 = min(best32, seconds32), min(best16, seconds16)
        if n >= 2 and best16 > 3 * best32:  # two runs: one slow bf16 run can be a hiccup of the machine
            return False
    return best16 <= BF16_FAST_RATIO * best32


def _forced():
    """The answer PROBE_ENV gives (True, False), or None when it is not set; a bad value is an error."""
    value = os.environ.get(PROBE_ENV, "")
    if value not in ("", "fast", "slow"):
        raise InputError(f"{PROBE_ENV}={value!r}: give fast or slow (or leave it unset to measure)")
    return {"": None, "fast": True, "slow": False}[value]


def _measure():
    """The probe, one thread: True where bf16 pays (bf16_pays)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bf16_pays(_probe_pairs())
    finally:
        torch.set_num_threads(threads)


@functools.cache
def cpu_bf16():
    """(whether bf16 autocast pays on this CPU, how that was found: "measured" or "DISTIL_CPU_BF16=fast|slow"),
    decided once per process: every decision and every record reads this one answer.

    The probe times a matmul in bf16 against fp32, one thread, in turns, and compares the fastest of each (a few
    ms where bf16 is native, ~0.3 s where it is emulated). DISTIL_CPU_BF16=fast|slow answers without measuring.
    Flags mislead both ways: oneDNN runs bf16 on AMX even when PyTorch's own kernels are AVX2
    (ATEN_CPU_CAPABILITY=avx2: 6x faster than fp32 on the project's Xeon), and emulates it ~75x slower without
    AVX-512 (ONEDNN_MAX_CPU_ISA=AVX2; an AVX2-only EPYC ran a training step 11x slower). docs/benchmarks.md has
    the figures."""
    forced = _forced()
    if forced is not None:
        return forced, f"{PROBE_ENV}={os.environ[PROBE_ENV]}"
    return _measure(), "measured"


def cpu_bf16_is_fast():
    """Whether bf16 autocast pays on this CPU (cpu_bf16())."""
    return cpu_bf16()[0]


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # autocast dtypes; fp32 runs without autocast


@dataclasses.dataclass(frozen=True)
class Precision:
    requested: str  # "fp16", "bf16" or "fp32": the flags as given
    used: str  # what runs
    why: str = ""  # why `used` differs from `requested` ("" when it does not)
    cpu_bf16: str = ""  # --bf16 on a CPU: how the CPU's answer came ("measured: fast", "DISTIL_CPU_BF16=slow")

    @classmethod
    def decide(cls, fp16, bf16, device):
        """fp16 needs CUDA; bf16 on a CPU needs native bf16 kernels, as measured by cpu_bf16_is_fast() (else it
        runs ~10x slower than fp32)."""
        requested = "fp16" if fp16 else "bf16" if bf16 else "fp32"
        if fp16 and device.type != "cuda":
            why = "--fp16 needs a CUDA GPU: training in fp32 on the CPU (--bf16 gives mixed precision on CPU)"
            return cls(requested, "fp32", why)
        if bf16 and device.type == "cpu":
            fast, source = cpu_bf16()
            how = f"measured: {'fast' if fast else 'slow'}" if source == "measured" else source
            if fast:
                return cls(requested, requested, cpu_bf16=how)
            if source == "measured":
                why = (
                    f"--bf16: this CPU, {cpu_description()}, has no native bf16 (a bf16 matmul measured no "
                    "faster than fp32; without AVX-512 bf16 is emulated, ~10x slower), so training runs in fp32"
                )
            else:
                why = f"--bf16: {source} says this CPU has no fast bf16, so training runs in fp32"
            return cls(requested, "fp32", why, how)
        return cls(requested, requested)

    @classmethod
    def for_trainer(cls, training):
        """The decision for a transformers Trainer's TrainingArguments `training`: (the decision, the arguments
        to run with, with --fp16/--bf16 cleared where they fall back to fp32, so the Trainer records what ran)."""
        cuda = torch.cuda.is_available() and not training.use_cpu
        decision = cls.decide(training.fp16, training.bf16, torch.device("cuda" if cuda else "cpu"))
        if decision.why:
            training = dataclasses.replace(training, fp16=False, bf16=False)
        return decision, training

    @property
    def dtype(self):
        """The autocast dtype, None for fp32."""
        return DTYPES.get(self.used)

    @property
    def teacher_dtype(self):
        """The frozen teacher is stored in the half type: it never trains, and that halves its memory and time."""
        return self.dtype or torch.float32

    @property
    def scaled(self):
        """fp16 only: a GradScaler, which skips overflowing steps instead of failing on them."""
        return self.used == "fp16"

    def scaler(self):
        return torch.amp.GradScaler("cuda", enabled=self.scaled)

    def autocast(self, device_type):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def record(self, device_type="cpu"):
        out = {"requested": self.requested, "used": self.used, "why": self.why or None,
               "attention": attention_for(device_type, self.used) or "sdpa"}
        return out | ({"cpu_bf16": self.cpu_bf16} if self.cpu_bf16 else {})


def trainer_precision(training):
    """The precision ("fp16", "bf16", "fp32") a Trainer's TrainingArguments run in, once Precision.for_trainer
    has cleared the flags that fell back."""
    return "fp16" if training.fp16 else "bf16" if training.bf16 else "fp32"


def autocast_dtype(training):
    """The dtype a Trainer's steps autocast to (None: fp32): the teacher's pass and evaluation run in it too."""
    return DTYPES.get(trainer_precision(training))
