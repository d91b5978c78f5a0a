"""Which precision a training run uses, decided once: what was asked (--fp16, --bf16), what runs, and why.

Everything that depends on it reads one `Precision`: the autocast dtype of the forwards, the attention
implementation the models use, the GradScaler (fp16 only), the dtype the frozen teacher is stored in, and whether
non-finite losses are an error (under fp16 an overflow is the scaler's business: the step is skipped and
counted). parameters.json records both the request and the decision.
"""

import contextlib
from dataclasses import dataclass

import torch

from utils import cpu_bf16_is_fast, cpu_description

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


@dataclass(frozen=True)
class Precision:
    requested: str  # "fp16", "bf16" or "fp32": the flags as given
    used: str  # what runs
    why: str = ""  # why `used` differs from `requested` ("" when it does not)

    @classmethod
    def decide(cls, fp16, bf16, device):
        """fp16 needs CUDA; bf16 on a CPU needs native bf16 kernels, as measured by utils.cpu_bf16_is_fast() (else
        it runs ~10x slower than fp32)."""
        requested = "fp16" if fp16 else "bf16" if bf16 else "fp32"
        if fp16 and device.type != "cuda":
            why = "--fp16 needs a CUDA GPU: training in fp32 on the CPU (--bf16 gives mixed precision on CPU)"
            return cls(requested, "fp32", why)
        if bf16 and device.type == "cpu" and not cpu_bf16_is_fast():
            why = (f"--bf16: this CPU, {cpu_description()}, has no native bf16 (a bf16 matmul measured no faster "
                   f"than fp32; without AVX-512 bf16 is emulated, ~10x slower), so training runs in fp32")  # fmt: skip
            return cls(requested, "fp32", why)
        return cls(requested, requested)

    @property
    def dtype(self):
        """The autocast dtype, None for fp32."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.used)

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
        return {"requested": self.requested, "used": self.used, "why": self.why or None,
                "attention": attention_for(device_type, self.used) or "sdpa"}
