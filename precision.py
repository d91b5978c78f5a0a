"""Which precision a training run uses, decided once: what was asked (--fp16, --bf16), what runs, and why.

Everything that depends on it reads one `Precision`: the autocast dtype of the forwards, the attention
kernel they may use, the GradScaler (fp16 only), the dtype the frozen teacher is stored in, and whether
non-finite losses are an error (under fp16 an overflow is the scaler's business: the step is skipped and
counted). parameters.json records both the request and the decision.
"""

import contextlib
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from utils import cpu_bf16_is_fast, cpu_description

# The scaled_dot_product_attention kernels a step may use, by (device type, autocast dtype); absent: PyTorch
# chooses. Measured with benchmarks/bench_attention.py (docs/benchmarks.md, "The attention kernel").
ATTENTION = {}


def attention_backends(device, dtype):
    """The SDPA kernels (SDPBackend names) a forward on `device` under autocast `dtype` may use, or None."""
    return ATTENTION.get((torch.device(device).type, dtype))


def attention_kernel(device, dtype):
    """A context in which scaled_dot_product_attention uses attention_backends(device, dtype) (or chooses)."""
    names = attention_backends(device, dtype)
    if names is None:
        return contextlib.nullcontext()
    return sdpa_kernel([getattr(SDPBackend, n.upper()) for n in names])


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
        """Autocast to the dtype (none in fp32), with the attention kernel chosen for it on this device."""
        stack = contextlib.ExitStack()
        if self.dtype is not None:
            stack.enter_context(torch.autocast(device_type, dtype=self.dtype))
        stack.enter_context(attention_kernel(device_type, self.dtype))
        return stack

    def record(self, device_type="cpu"):
        return {"requested": self.requested, "used": self.used, "why": self.why or None,
                "attention": attention_backends(device_type, self.dtype) or "sdpa (PyTorch chooses)"}
