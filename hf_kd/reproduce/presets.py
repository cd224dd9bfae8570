"""The protocol's presets, one type per task, and ``--override KEY=VALUE`` for their fields.

* :data:`MLM_TINY` (``--preset tiny``): CPU, offline, the built-in corpus, tiny BERT; teachers trained once and cached.
* :data:`GPU_SMALL` (``--preset gpu-small``): one GPU (H100/A100, bf16), BERT-small students (4 layers, 512 hidden)
  on C4 streamed from the Hub, the recycled BERT-medium of Turc et al. 2019 (``google/bert_uncased_L-8_H-512_A-8``,
  same WordPiece vocabulary) as teacher, a 0.75x/1.5x/2x budget frontier, 2 seeds. Sized for about an hour on one
  H100 (the run measures its own step costs on the GPU and prints its plan and time estimate before training).
* :data:`CLM_TINY` (``--task clm``): the tiny protocol for a GPT-2 of the same size (2 layers, 128 hidden) on the
  built-in corpus, quality = held-out next-token loss; sized for ~10 min on 2 CPU cores.
* :data:`VISION_TINY` (``--task vision``): resnet18 teachers and students on scikit-learn digits, CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..core.errors import UserError

TEXT_TASKS = ("mlm", "clm")


# The teachers' budgets: no run's key needs them (a KD run's key holds the records, steps included, of the teachers
# it reads) and no step's cost depends on them (hf_kd/reproduce/jobs.py: comparable, calibrate.py).
TEACHER_BUDGETS = ("good_teacher_steps", "second_teacher_steps", "poor_teacher_steps")


@dataclass(frozen=True)
class TextPreset:
    """A text protocol (MLM or causal LM): model size, corpus, budgets. The defaults are the tuned tiny MLM one
    (README, "Reproducing the paper in miniature", has the evidence)."""

    model_preset: str = "tiny"
    vocab_size: int = 8192
    max_seq_length: int = 128
    batch_size: int = 16
    steps: int = 400
    learning_rate: float = 2e-3  # 1e-3 left the tiny models near the unigram plateau; 3e-3 diverged to it
    warmup_ratio: float = 0.06
    eval_every: int = 40
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    good_teacher_steps: int = 1200
    second_teacher_steps: int = 800
    poor_teacher_steps: int = 100
    # 1.5x and 2x too: a KD run that ends better than the 1x baseline needs frontier points beyond it (the
    # frontier is interpolated, never extrapolated; a run beyond its best point reads "not reached")
    frontier: tuple[float, ...] = (0.5, 0.75, 1.5, 2.0)
    mlm_probability: float = 0.15
    kd_positions: str = "masked"  # "all": KD at every position (the regime study compares the two)
    # Corpus and teachers other than the built-in ones (the gpu-small preset: C4 streaming, a Hub teacher).
    dataset_name: str | None = None  # a Hub dataset instead of the built-in corpus / --corpus file
    dataset_config_name: str | None = None
    streaming: bool = False
    tokenizer_name: str | None = None  # a pretrained tokenizer instead of a WordPiece one trained on the corpus
    max_eval_samples: int | None = None  # validation sequences kept (a stream's first ones)
    recycled_teacher: str | None = None  # a pretrained model (path or Hub id) used as teacher "good", not trained
    bf16: bool = False  # on a GPU only
    task: str = "mlm"  # "clm": GPT-style students and teachers (``clm_preset_config``), next-token loss
    cache_top_k: int = 64  # teacher tokens stored per KD position with --teacher_outputs cached (docs/cache.md)
    # The KD students' peak learning rate (None: learning_rate, the baselines'). The paper code's alpha 0.9 / T 4
    # multiplies the KD gradient by T^2 (Hinton et al. 2015), so it may need a smaller rate than the baselines.
    kd_learning_rate: float | None = None
    # One data stream for every seed (None: seed i reads stream i): seeds then differ only in the initialisation and
    # dropout (MLM masks follow the data stream), which measures how much of the per-seed spread the data makes.
    data_seed: int | None = None

    def __post_init__(self):
        if self.task not in TEXT_TASKS:
            raise UserError(f"preset task={self.task!r} is invalid: expected one of {', '.join(TEXT_TASKS)}")


@dataclass(frozen=True)
class VisionPreset:
    """The vision protocol: a torchvision model on scikit-learn digits (the defaults: resnet18, CPU)."""

    model: str = "resnet18"
    batch_size: int = 32
    steps: int = 90  # 2 epochs of the 1,437 training digits
    eval_every: int = 15
    learning_rate: float = 0.05
    warmup_steps: int = 10
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    good_teacher_steps: int = 270
    second_teacher_steps: int = 180
    poor_teacher_steps: int = 25
    frontier: tuple[float, ...] = (0.5, 0.75, 1.5)
    task: str = "vision"


MLM_TINY = TextPreset()
GPU_SMALL = TextPreset(
    model_preset="small", vocab_size=30522, max_seq_length=128, batch_size=128, steps=3000, learning_rate=1e-3,
    warmup_ratio=0.06, eval_every=300, kd_alpha=0.5, kd_temperature=1.0, frontier=(0.75, 1.5, 2.0),
    dataset_name="allenai/c4", dataset_config_name="en", streaming=True, tokenizer_name="bert-base-uncased",
    max_eval_samples=2048, recycled_teacher="google/bert_uncased_L-8_H-512_A-8", bf16=True)
# A causal-LM step scores every position over the whole vocabulary (an MLM step: the 15 % masked ones), so it
# costs several MLM steps: fewer steps fit the same wall-clock (see the README for the measured step time).
# The poor teacher: far behind the good one and close to the no-KD student, yet below the unigram level. A 30-step
# teacher (0.41 nats above it) is worse than token frequencies, no teacher at all; at the students' own 120 steps
# the teacher's seed ended 0.05 nats above it, so it trains 1.5x their budget (docs/reproduce_clm_full.md).
CLM_TINY = replace(MLM_TINY, task="clm", steps=120, eval_every=12, good_teacher_steps=360,
                   second_teacher_steps=240, poor_teacher_steps=180)
VISION_TINY = VisionPreset()
# task -> preset name -> preset
PRESETS = {"mlm": {"tiny": MLM_TINY, "gpu-small": GPU_SMALL}, "clm": {"tiny": CLM_TINY}, "vision": {"tiny": VISION_TINY}}
DEFAULT_SEEDS = {"tiny": 3, "gpu-small": 2}


def _parse(value: str, type_name: str, key: str):
    if value.lower() in ("none", "") and "None" in type_name:
        return None
    try:
        if type_name.startswith("tuple"):
            return tuple(float(x) for x in value.split(",") if x)
        if type_name.startswith("bool"):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if type_name.startswith("int"):
            return int(value)
        if type_name.startswith("float"):
            return float(value)
    except ValueError as e:
        raise UserError(f"--override {key}={value}: expected a value of type {type_name}") from e
    return value


# The range each numeric preset field must lie in: (test, what is expected). A zero batch size or step count
# would otherwise fail deep inside a collator or a scheduler, after the corpus and the models were built.
_AT_LEAST_ONE = (lambda x: x >= 1, "an integer >= 1")
VALID_RANGES = {
    **{k: _AT_LEAST_ONE for k in ("vocab_size", "max_seq_length", "batch_size", "steps", "eval_every",
                                  "good_teacher_steps", "second_teacher_steps", "poor_teacher_steps",
                                  "max_eval_samples")},
    "warmup_steps": (lambda x: x >= 0, "an integer >= 0"),
    "learning_rate": (lambda x: x > 0, "a number > 0"),
    "kd_learning_rate": (lambda x: x > 0, "a number > 0"),
    "data_seed": (lambda x: x >= 0, "an integer >= 0"),
    "kd_temperature": (lambda x: x > 0, "a number > 0"),
    "kd_alpha": (lambda x: 0 <= x <= 1, "a number in [0, 1]"),
    "warmup_ratio": (lambda x: 0 <= x < 1, "a number in [0, 1)"),
    "mlm_probability": (lambda x: 0 < x < 1, "a number in (0, 1)"),
    "frontier": (lambda xs: all(x > 0 for x in xs), "comma-separated budgets > 0"),
}


def _check_range(key: str, value, pair: str) -> None:
    test, expected = VALID_RANGES.get(key, (None, ""))
    if test is not None and value is not None and not test(value):
        raise UserError(f"--override {pair} is invalid: expected {key} to be {expected}")


def apply_overrides(p, pairs: list[str] | None):
    """``KEY=VALUE`` pairs replace preset fields (e.g. a tiny CPU rehearsal of gpu-small); unknown keys and values
    out of their field's range (:data:`VALID_RANGES`) are errors, raised before any data or model is touched."""
    types = {f.name: str(f.type) for f in fields(p)}
    changes = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise UserError(f"--override {pair!r} is invalid: expected KEY=VALUE with KEY one of {', '.join(types)}")
        changes[key] = _parse(value, types[key], key)
        _check_range(key, changes[key], pair)
    return replace(p, **changes)


# Validation sequences a full-budget text protocol evaluates when its preset does not cap them (the built-in
# corpus has 119), and the fewest a quick look keeps: the scale for a quick look's smaller evaluation set.
FULL_EVAL_SEQUENCES, QUICK_EVAL_SEQUENCES = 128, 32


def scale_steps(p, steps: int):
    """The students' budget set to ``steps``; evaluation interval and trained teachers scale with it, and so, for a
    quick look (fewer steps than the preset's), does a text protocol's validation set: each run still evaluates
    ~10 times, so without it a 24-step look would spend as long evaluating as a 120-step run."""
    k = steps / p.steps
    changes = dict(steps=steps, eval_every=max(1, int(p.eval_every * k)),
                   good_teacher_steps=max(1, int(p.good_teacher_steps * k)),
                   second_teacher_steps=max(1, int(p.second_teacher_steps * k)),
                   poor_teacher_steps=max(1, int(p.poor_teacher_steps * k)))
    if k < 1 and hasattr(p, "max_eval_samples"):
        cap = p.max_eval_samples or FULL_EVAL_SEQUENCES
        changes["max_eval_samples"] = min(cap, max(QUICK_EVAL_SEQUENCES, int(cap * k)))
    return replace(p, **changes)
