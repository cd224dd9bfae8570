"""``DistillationTrainingArguments``: ``TrainingArguments`` plus the KD knobs, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .losses import DIVERGENCES
from .schedule import TEACHER_SELECTIONS

KD_POSITIONS = ("masked", "all")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
NONFINITE_POLICIES = ("stop", "skip")


def _bad(name: str, value, expected: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid: expected {expected}")


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """Training arguments for :class:`hf_kd.DistillationTrainer` (every ``kd_*`` field is validated)."""

    kd_alpha: float = field(
        default=0.9,
        metadata={"help": "Weight of the KD term in [0, 1]; the hard-label (MLM) loss gets 1 - kd_alpha. 0.9 is what "
                  "the paper's released code used; at tiny scale 0.5 worked better (see README, reproduce)."},
    )
    kd_temperature: float = field(
        default=4.0,
        metadata={"help": "Softmax temperature T > 0 for teacher and student; the KD term is multiplied by T^2 "
                  "(Hinton et al. 2015) so its gradient scale does not shrink with T. 4.0 as in the paper's code."},
    )
    kd_stop_ratio: float | None = field(
        default=None,
        metadata={"help": "Stop KD after this fraction of the optimizer steps, in (0, 1]; stop = ceil(ratio * "
                  "max_steps). The paper found KD for the first 20-50% best for BERT. Unset = KD throughout."},
    )
    kd_stop_steps: int | None = field(
        default=None,
        metadata={"help": "Stop KD at this absolute optimizer step (>= 0); wins over kd_stop_ratio, like "
                  "warmup_steps over warmup_ratio. Beyond max_steps means KD throughout (a warning says so)."},
    )
    kd_teacher_selection: str = field(
        default="mean",
        metadata={"help": "With several teachers: 'mean' = target is the mean of their softened distributions "
                  "(n teacher forwards per step); 'sample' = one teacher per optimizer step, a pure function of "
                  "(seed, step), so every rank and every resume agrees (1 forward per step; the paper's O(1) trick)."},
    )
    kd_positions: str = field(
        default="masked",
        metadata={"help": "'masked' = KD only where labels != -100 (lets teacher and student run their vocabulary "
                  "head at masked positions only: measured 1.15x vs 1.75x per KD step at tiny scale); 'all' = every "
                  "non-padding position, as the paper's own code did. CE is always over masked positions."},
    )
    kd_divergence: str = field(
        default="forward_kl",
        metadata={"help": "'forward_kl' = KL(teacher || student), the Hinton form; 'reverse_kl' = KL(student || "
                  "teacher), the argument order of the paper's released code."},
    )
    teacher_model_name_or_path: list[str] | None = field(
        default=None,
        metadata={"help": "Teacher model folder(s) or Hub id(s), e.g. a previous run's output_dir; several = an "
                  "ensemble. None = no-KD baseline through the same loss path."},
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={"help": f"dtype the teacher(s) run in: one of {TEACHER_DTYPES}. 'auto' follows bf16/fp16 flags "
                  "(a frozen teacher loses nothing in bf16 and halves its memory)."},
    )
    sparse_mlm_head: bool = field(
        default=True,
        metadata={"help": "Run the MLM head only at positions that carry a loss (student: masked positions; teacher: "
                  "KD positions) for BERT-family models; falls back to the full forward for other heads."},
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={"help": "Allow loading .bin/.pt weights (through torch.load(weights_only=True)); off because "
                  "unpickling can run code."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into a non-empty output_dir (otherwise refused, so no run is overwritten)."},
    )
    on_nonfinite_loss: str = field(
        default="stop",
        metadata={"help": "What a NaN/inf training loss does: 'stop' = raise, naming the step (the last checkpoint "
                  "stays valid); 'skip' = drop that step's update and continue."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise _bad("kd_alpha", self.kd_alpha, "a number in [0, 1]")
        if not self.kd_temperature > 0:
            raise _bad("kd_temperature", self.kd_temperature, "a number > 0")
        if self.kd_stop_ratio is not None and not 0.0 < self.kd_stop_ratio <= 1.0:
            raise _bad("kd_stop_ratio", self.kd_stop_ratio, "a fraction in (0, 1]")
        if self.kd_stop_steps is not None and self.kd_stop_steps < 0:
            raise _bad("kd_stop_steps", self.kd_stop_steps, "an integer >= 0")
        if (self.kd_stop_steps is not None and self.kd_stop_ratio is not None and self.max_steps > 0
                and self.kd_stop_steps != int(-(-self.kd_stop_ratio * self.max_steps // 1))):
            raise ValueError(
                f"kd_stop_steps={self.kd_stop_steps} and kd_stop_ratio={self.kd_stop_ratio} disagree for "
                f"max_steps={self.max_steps} (ratio gives step {int(-(-self.kd_stop_ratio * self.max_steps // 1))}); "
                "set only one of them"
            )
        for name, allowed in (("kd_teacher_selection", TEACHER_SELECTIONS), ("kd_positions", KD_POSITIONS),
                              ("kd_divergence", DIVERGENCES), ("teacher_dtype", TEACHER_DTYPES),
                              ("on_nonfinite_loss", NONFINITE_POLICIES)):
            if getattr(self, name) not in allowed:
                raise _bad(name, getattr(self, name), f"one of {allowed}")
        if isinstance(self.teacher_model_name_or_path, str):
            self.teacher_model_name_or_path = [self.teacher_model_name_or_path]
