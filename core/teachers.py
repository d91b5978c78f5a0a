"""The teacher, loaded and checked one way for every script: train.py's language model, run_glue.py's
sequence classifier and run_qa.py's span predictor.

`load_frozen` gives the teacher frozen (eval mode, no gradients) after core.loading.load_lm's checks (a checkpoint of
this architecture, every weight of the base model filled), and refuses a checkpoint without the head the
script needs (an encoder not yet fine-tuned) in one line that says how to get one. `check_width` is the one
check of the losses that compare hidden states.
"""

from core.errors import InputError
from core.loading import load_lm


def load_frozen(model_class, path, needs=None):
    """(the frozen teacher, the names of the head weights its checkpoint lacks). `needs`: (what the teacher must
    be, how to get one), for scripts that cannot work without the head `model_class` adds; without it the
    caller decides (train.py runs its head-free losses)."""
    model, no_head = load_lm(model_class, path, "the teacher")
    if no_head and needs:
        kind = ", ".join(model.config.architectures or ["an encoder"])
        raise InputError(f"the teacher {path} is not {needs[0]} ({kind}; it lacks {no_head[0]}): {needs[1]}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), no_head


def check_width(student_config, teacher_config, why):
    """The losses that compare hidden states (`why` names them and what to do instead) need equal widths."""
    s, t = student_config.hidden_size, teacher_config.hidden_size  # every config maps it (DistilBERT's `dim`)
    if s != t:
        raise InputError(f"the student's hidden size {s} differs from the teacher's {t}: {why}")
