"""``DistillationTrainingArguments``: ``TrainingArguments`` plus the KD knobs, validated at construction."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from ..core.kd_args import bad_value as _bad
from ..core.kd_args import kd_field, validate_kd_fields

KD_POSITIONS = ("masked", "all")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
NONFINITE_POLICIES = ("stop", "skip")
KD_TASKS = ("auto", "mlm", "clm")


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


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """Training arguments for :class:`hf_kd.DistillationTrainer` (every ``kd_*`` field is validated)."""

    kd_alpha: float = kd_field("kd_alpha")
    kd_temperature: float = kd_field("kd_temperature")
    kd_stop_ratio: float | None = kd_field("kd_stop_ratio")
    kd_stop_steps: int | None = kd_field("kd_stop_steps")
    kd_teacher_selection: str = kd_field("kd_teacher_selection")
    kd_positions: str = field(
        default="masked",
        metadata={"help": "'masked' = KD only where labels != -100 (lets teacher and student run their vocabulary "
                  "head at masked positions only: measured 1.15x vs 1.75x per KD step at tiny scale); 'all' = every "
                  "non-padding position, as the paper's own code did. CE is always over masked positions.",
                  "choices": KD_POSITIONS},
    )
    kd_divergence: str = kd_field("kd_divergence")
    teacher_model_name_or_path: list[str] | None = field(
        default=None,
        metadata={"help": "Teacher model folder(s) or Hub id(s), e.g. a previous run's output_dir; several = an "
                  "ensemble. None = no-KD baseline through the same loss path."},
    )
    kd_teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Train from a teacher-output cache written by `hf-kd cache-teacher` with this run's flags "
                  "(docs/cache.md) instead of running the teacher(s): no teacher is loaded. A cache made for another "
                  "stream (data, seeds, batch geometry, world size, vocabulary, positions, too few steps) is refused "
                  "before training. --teacher_model_name_or_path is then optional: given, it is checked against the "
                  "cache's teacher fingerprints."},
    )
    kd_teacher_cache_readers: int = field(
        default=1,
        metadata={"help": "With --kd_teacher_cache: the number of runs the cache's production cost is amortised over "
                  "(teacher_cache_gpu_hours = production GPU-hours x share of cached steps read / readers); 1 = "
                  "charged in full to this run."},
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={"help": f"dtype the teacher(s) run in: one of {TEACHER_DTYPES}. 'auto' = bfloat16 under --bf16, "
                  "float16 under --fp16, else float32 (never the dtype the checkpoint was saved in); a frozen "
                  "teacher loses little in bf16 and halves its memory.", "choices": TEACHER_DTYPES},
    )
    sparse_mlm_head: bool = field(
        default=True,
        metadata={"help": "Run the MLM head only at positions that carry a loss (student: masked positions; teacher: "
                  "KD positions) for BERT-family models; falls back to the full forward for other heads."},
    )
    kd_task: str = field(
        default="auto",
        metadata={"help": "Which loss the student trains with: 'mlm' (masked LM), 'clm' (causal LM: next-token CE and "
                  "KD over shifted positions) or 'auto' = from the model class (other models are refused)."},
    )
    clm_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Causal LMs: positions per chunk of the fused LM-head + CE + KD loss, which never holds "
                  "[positions, vocab] logits (None = auto, about 16 MB per [chunk, vocab] float32 buffer); 0 = "
                  "full logits from the model's own head (needed under DeepSpeed ZeRO-3)."},
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
    hub_strategy: str = field(
        default="end",
        metadata={"help": "With --push_to_hub: 'end' = upload the finished run folder (model, tokenizer, model card, "
                  "results) once after training; the only strategy hf-kd supports (checkpoints are not uploaded).",
                  "choices": ("end", "every_save", "checkpoint", "all_checkpoints")},
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "transformers' filter of NaN/inf losses out of the logged loss. Off by default here: it "
                  "reads every micro-batch's loss on the host (a device sync each), and --on_nonfinite_loss already "
                  "stops or skips a non-finite step."},
    )
    on_nonfinite_loss: str = field(
        default="stop",
        metadata={"help": "What a NaN/inf training loss does: 'stop' = raise, naming the step (the last checkpoint "
                  "stays valid); 'skip' = drop that step's update and continue.", "choices": NONFINITE_POLICIES},
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
                              ("on_nonfinite_loss", NONFINITE_POLICIES), ("kd_task", KD_TASKS)):
            if getattr(self, name) not in allowed:
                raise _bad(name, getattr(self, name), f"one of {allowed}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            # transformers would read it as "keep every checkpoint" without a word; the vision CLI refuses it too
            raise _bad("save_total_limit", self.save_total_limit, "a positive integer (unset = keep every checkpoint)")
        if self.clm_chunk_size is not None and self.clm_chunk_size < 0:
            raise _bad("clm_chunk_size", self.clm_chunk_size, "an integer >= 0 (0 = full logits) or None (auto)")
        if self.kd_teacher_cache_readers < 1:
            raise _bad("kd_teacher_cache_readers", self.kd_teacher_cache_readers, "an integer >= 1")
        if self.kd_teacher_cache is not None and self.kd_divergence != "forward_kl":
            raise _bad("kd_divergence", self.kd_divergence, "forward_kl with --kd_teacher_cache (stored sparse "
                       "targets give the forward KL only)")
        if isinstance(self.teacher_model_name_or_path, str):
            self.teacher_model_name_or_path = [self.teacher_model_name_or_path]
