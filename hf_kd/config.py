"""``DistillationTrainingArguments``: ``TrainingArguments`` plus the KD knobs, validated at construction."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from .losses import DIVERGENCES
from .schedule import TEACHER_SELECTIONS

KD_POSITIONS = ("masked", "all")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
NONFINITE_POLICIES = ("stop", "skip")


def _bad(name: str, value, expected: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid: expected {expected}")


def _check_deepspeed_file(value) -> None:
    """A ``--deepspeed`` config path must be a readable JSON file (transformers' own error omits the file name)."""
    if not isinstance(value, str) or not value.endswith(".json"):
        return  # a dict or base64 string: transformers validates those
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"--deepspeed {value!r} does not exist; expected a DeepSpeed JSON config file")
    try:
        json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"--deepspeed {value!r} is not valid JSON ({e}); expected a DeepSpeed JSON config file") from e


def validate_kd_fields(args, max_steps: int | None = None) -> None:
    """Checks of the ``kd_*`` fields shared by the text and vision arguments (one meaning of each flag).

    ``max_steps`` (when known) lets the two stop forms be compared: both set and disagreeing is an error.
    """
    if not 0.0 <= args.kd_alpha <= 1.0:
        raise _bad("kd_alpha", args.kd_alpha, "a number in [0, 1]")
    if not args.kd_temperature > 0:
        raise _bad("kd_temperature", args.kd_temperature, "a number > 0")
    if args.kd_stop_ratio is not None and not 0.0 < args.kd_stop_ratio <= 1.0:
        raise _bad("kd_stop_ratio", args.kd_stop_ratio, "a fraction in (0, 1]")
    if args.kd_stop_steps is not None and args.kd_stop_steps < 0:
        raise _bad("kd_stop_steps", args.kd_stop_steps, "an integer >= 0")
    if args.kd_stop_steps is not None and args.kd_stop_ratio is not None and max_steps:
        from_ratio = math.ceil(args.kd_stop_ratio * max_steps)
        if args.kd_stop_steps != from_ratio:
            raise ValueError(f"kd_stop_steps={args.kd_stop_steps} and kd_stop_ratio={args.kd_stop_ratio} disagree for "
                             f"max_steps={max_steps} (ratio gives step {from_ratio}); set only one of them")
    for name, allowed in (("kd_teacher_selection", TEACHER_SELECTIONS), ("kd_divergence", DIVERGENCES)):
        if getattr(args, name) not in allowed:
            raise _bad(name, getattr(args, name), f"one of {allowed}")


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
                  "max_steps). The paper found KD for the first 20 to 50 percent best for BERT. Unset = KD throughout."},
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
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow a teacher's own model code (Hub/folder) to run. Off: it is arbitrary code."},
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

    # -- credentials never reach disk: training_args.bin is torch.save(args) in every checkpoint -------------
    def __getstate__(self) -> dict:
        # to_dict()/to_json_string() already mask ``*_token`` fields; pickling did not, so hub_token landed in
        # training_args.bin in clear text. Copies (copy/deepcopy) keep it: see __copy__/__deepcopy__.
        return {k: (None if k.endswith("_token") else v) for k, v in self.__dict__.items()}

    def __copy__(self):
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def __post_init__(self):
        _check_deepspeed_file(self.deepspeed)
        super().__post_init__()
        validate_kd_fields(self, self.max_steps if self.max_steps > 0 else None)
        for name, allowed in (("kd_positions", KD_POSITIONS), ("teacher_dtype", TEACHER_DTYPES),
                              ("on_nonfinite_loss", NONFINITE_POLICIES)):
            if getattr(self, name) not in allowed:
                raise _bad(name, getattr(self, name), f"one of {allowed}")
        if isinstance(self.teacher_model_name_or_path, str):
            self.teacher_model_name_or_path = [self.teacher_model_name_or_path]
