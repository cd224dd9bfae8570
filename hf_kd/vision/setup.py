"""What the vision KD loop builds before it starts: arguments, student/teacher networks, optimizer, LR schedule.

Any ``torchvision.models`` classification architecture is accepted by name (``resnet50``, ``resnet101``,
``convnext_tiny``, ...), with ``num_classes`` taken from the data. A teacher is an architecture plus a checkpoint,
given pairwise and repeatable for an ensemble::

    accelerate launch run_scripts/run_resnet_kd.py --model resnet50 \
        --teacher_model resnet101 --teacher_checkpoint /ckpt/resnet101.safetensors \
        --teacher_model resnet152 --teacher_checkpoint runs/resnet152_baseline

A checkpoint is a safetensors state dict, a torchvision weights file (``.pth``, pickle: needs
``--allow_pickle_weights`` and loads with ``torch.load(weights_only=True)``), or a previous run's output dir,
where :func:`save_model_dir` wrote ``model.safetensors`` and ``config.json`` (architecture, classes, input
normalisation; the key layout of timm's Hub configs).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.atomic import write_atomic, write_json_atomic
from ..core.errors import UserError
from ..core.kd_args import kd_field, validate_kd_fields
from ..core.schedule import resolve_kd_stop_step
from ..core.teachers import TeacherLoadError, load_state_dict_file
from ..core.trackers import check_trackers

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class VisionModelArguments:
    """Student architecture and the teacher(s) it distils from."""

    model: str = field(
        default="resnet50",
        metadata={"help": "Student architecture: any torchvision.models classification model name (resnet18, "
                  "resnet50, ...); num_classes is set from the data. Trained from scratch."},
    )
    teacher_model: list[str] | None = field(
        default=None,
        metadata={"action": "extend", "help": "Teacher architecture(s), pairwise with --teacher_checkpoint; repeat "
                  "the flag (or list several) for an ensemble. May be omitted when every checkpoint is a previous "
                  "run's output dir (its config.json names the architecture)."},
    )
    teacher_checkpoint: list[str] | None = field(
        default=None,
        metadata={"action": "extend", "help": "Teacher weights: a .safetensors state dict, a torchvision .pth weights "
                  "file (needs --allow_pickle_weights) or a previous run's output dir. None = no-KD baseline."},
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={"help": "Allow .pth/.pt/.bin teacher weights (loaded with torch.load(weights_only=True)); off "
                  "because unpickling can run code."},
    )
    channels_last: bool = field(
        default=True,
        metadata={"help": "Run student and teachers in channels_last memory format (faster convolutions on "
                  "tensor-core GPUs; harmless elsewhere)."},
    )

    def __post_init__(self):
        require_torchvision()  # at parse time: --help still answers without it
        self.teacher_checkpoint = list(self.teacher_checkpoint or [])
        self.teacher_model = list(self.teacher_model or [])
        if self.teacher_model and len(self.teacher_model) != len(self.teacher_checkpoint):
            raise UserError(
                f"{len(self.teacher_model)} --teacher_model but {len(self.teacher_checkpoint)} --teacher_checkpoint: "
                "give them pairwise (or omit --teacher_model when every checkpoint is a run output dir)")


def require_torchvision() -> None:
    """The vision task needs the ``vision`` extra; without it, say so in one line rather than a raw import error."""
    try:
        import torchvision  # noqa: F401
    except ImportError as e:
        raise UserError('the vision task needs torchvision, which is not installed; run `pip install "hf-kd[vision]"` '
                        '(from a clone: pip install -e ".[vision]")') from e


def classification_models() -> list[str]:
    """Names of torchvision's classification architectures (detection/segmentation/video excluded)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def build_model(name: str, num_classes: int, channels_last: bool = True) -> torch.nn.Module:
    """A randomly initialised torchvision classifier; unknown names fail in one line with close matches."""
    import torchvision

    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; e.g. {', '.join(names[:5])}"
        raise ValueError(f"unknown architecture {name!r}: expected a torchvision.models classification model{hint}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def read_model_json(run_dir: Path) -> dict:
    """The architecture record a finished run left next to its weights (``config.json``)."""
    meta_path = run_dir / CONFIG_FILE
    if not meta_path.is_file() or not (run_dir / MODEL_FILE).is_file():
        raise TeacherLoadError(
            f"teacher checkpoint folder {str(run_dir)!r} has no {MODEL_FILE} + {CONFIG_FILE}; expected the output_dir "
            "of a finished run_resnet_kd.py run (or pass a weights file)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise TeacherLoadError(f"{str(meta_path)!r} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or "architecture" not in meta or "num_classes" not in meta:
        raise TeacherLoadError(f"{str(meta_path)!r} lacks 'architecture'/'num_classes'")
    return meta


def _classifier_classes(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Output classes implied by a torchvision state dict: its last 2-D weight is the classifier (fc, heads.head,
    classifier[-1], ...). ``None`` when there is none (e.g. squeezenet's conv classifier)."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


def load_teacher(checkpoint: str, architecture: str | None, num_classes: int, allow_pickle: bool = False,
                 channels_last: bool = True) -> torch.nn.Module:
    """One teacher from ``checkpoint`` (file or run dir); its classes must equal the data's ``num_classes``."""
    path = Path(checkpoint)
    if path.is_dir():
        meta = read_model_json(path)
        if architecture and architecture != meta["architecture"]:
            raise TeacherLoadError(f"teacher {checkpoint!r} is a {meta['architecture']} (per its config), "
                                   f"but --teacher_model says {architecture}")
        architecture, weights_path = meta["architecture"], path / MODEL_FILE
    elif not path.exists():
        raise TeacherLoadError(f"teacher checkpoint {checkpoint!r} does not exist")
    else:
        if not architecture:
            raise TeacherLoadError(f"teacher checkpoint {checkpoint!r} is a weights file: name its architecture "
                                   "with --teacher_model")
        weights_path = path
    state = load_state_dict_file(weights_path, allow_pickle=allow_pickle)
    # Weights saved from a DDP- or torch.compile-wrapped model carry a prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    classes = _classifier_classes(state)
    if classes is not None and classes != num_classes:
        raise TeacherLoadError(f"teacher {checkpoint!r} predicts {classes} classes but the data has {num_classes}; "
                               "they must be equal")
    teacher = build_model(architecture, num_classes, channels_last)
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise TeacherLoadError(f"teacher {checkpoint!r} does not fit a {architecture}: {detail}") from e
    logger.info("loaded teacher %s from %s", architecture, checkpoint)
    return teacher


def load_teachers(args: VisionModelArguments, num_classes: int) -> tuple[list[torch.nn.Module], list[str]]:
    """All teachers ``args`` names (pairwise architecture/checkpoint), plus a display name for each."""
    archs: Sequence[str | None] = args.teacher_model or [None] * len(args.teacher_checkpoint)
    teachers = [load_teacher(c, a, num_classes, args.allow_pickle_weights, args.channels_last)
                for a, c in zip(archs, args.teacher_checkpoint)]
    return teachers, list(args.teacher_checkpoint)


def model_config(architecture: str, num_classes: int, image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 label_names: Sequence[str] | None = None, extra: dict | None = None) -> dict:
    """The ``config.json`` of a saved classifier: timm's Hub keys (``architecture``, ``num_classes``,
    ``label_names``, ``pretrained_cfg`` with the input size and normalisation) plus ``library: torchvision``
    (the architecture is a ``torchvision.models`` name) and ``extra`` (data, step)."""
    cfg: dict = {"architecture": architecture, "num_classes": int(num_classes), "library": "torchvision"}
    if label_names is not None:
        cfg["label_names"] = list(label_names)
    pretrained = {"num_classes": int(num_classes)}
    if image_size is not None:
        pretrained["input_size"] = [3, int(image_size), int(image_size)]
    if mean is not None and std is not None:
        pretrained.update(mean=[float(m) for m in mean], std=[float(v) for v in std])
    cfg["pretrained_cfg"] = pretrained
    return {**cfg, **(extra or {})}


def save_model_dir(state_dict: dict[str, torch.Tensor], output_dir: str | Path, architecture: str,
                   num_classes: int, extra: dict | None = None, **config) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (:func:`model_config` of the arguments; ``config`` takes its
    ``image_size``, ``mean``, ``std``, ``label_names``): a folder :func:`load_teacher` accepts as a teacher."""
    from safetensors.torch import save_file

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors needs contiguous tensors; channels_last conv weights are not (in the default sense).
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    write_atomic(out / MODEL_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    meta = model_config(architecture, num_classes, extra=extra, **config)
    write_json_atomic(out / CONFIG_FILE, meta)
    return out / MODEL_FILE


# -- training arguments ------------------------------------------------------------------------------------------
LR_SCHEDULERS = ("cosine", "step", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")


def _help(text: str, **kw) -> dict:
    return {"help": text, **kw}


@dataclass
class VisionTrainingArguments:
    """Optimisation, KD and run-management flags (defaults: the torchvision ResNet recipe, per 256 images)."""

    output_dir: str = field(metadata=_help(
        "Run folder: metrics.jsonl, checkpoint-<step>/, final model.safetensors + config.json + README.md."))
    overwrite_output_dir: bool = field(default=False, metadata=_help("Train into a non-empty output_dir."))
    seed: int = field(default=42, metadata=_help("Seed for initialisation, data order and teacher sampling."))
    epochs: int | None = field(default=None, metadata=_help(
        "Training epochs. Default: 90 for ImageFolder data (the classic ResNet recipe), 15 for the digits."))
    max_steps: int | None = field(default=None, metadata=_help("Optimizer steps; wins over --epochs."))
    per_device_train_batch_size: int = field(default=32, metadata=_help("Images per process per micro-batch."))
    per_device_eval_batch_size: int = field(default=64, metadata=_help("Images per process per eval batch."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help(
        "Micro-batches per optimizer step; global batch = per_device * processes * this."))
    learning_rate: float = field(default=0.1, metadata=_help(
        "Peak SGD learning rate; 0.1 suits a global batch of 256 -- scale linearly (0.8 for 2048)."))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum."))
    nesterov: bool = field(default=True, metadata=_help("Nesterov momentum (--no_nesterov for plain)."))
    weight_decay: float = field(default=1e-4, metadata=_help("L2 weight decay of SGD."))
    norm_weight_decay: float | None = field(default=None, metadata=_help(
        "Weight decay for normalisation-layer parameters (0 is common with label smoothing); unset = weight_decay."))
    label_smoothing: float = field(default=0.0, metadata=_help(
        "Label smoothing of the hard-label loss (0.1 in modern recipes); the KD target is never smoothed."))
    lr_scheduler_type: str = field(default="cosine", metadata=_help(
        f"One of {LR_SCHEDULERS}: cosine decay to 0, x lr_step_gamma at each of lr_step_epochs, or constant."))
    warmup_epochs: float = field(default=0.0, metadata=_help("Linear LR warmup length in epochs (5 for big batches)."))
    warmup_steps: int | None = field(default=None, metadata=_help("Warmup in optimizer steps; wins over epochs."))
    lr_step_epochs: list[int] = field(default_factory=lambda: [30, 60, 80], metadata=_help(
        "Step schedule: epochs at which the LR is multiplied by lr_step_gamma."))
    lr_step_gamma: float = field(default=0.1, metadata=_help("Step schedule decay factor."))
    kd_alpha: float = kd_field("kd_alpha", "Weight of the KD term in [0, 1]; the hard-label loss gets 1 - kd_alpha "
                                "(default as in the text trainer and the paper's code).")
    kd_temperature: float = kd_field("kd_temperature")
    kd_stop_ratio: float | None = kd_field("kd_stop_ratio")
    kd_stop_steps: int | None = kd_field("kd_stop_steps")
    kd_teacher_selection: str = kd_field("kd_teacher_selection")
    kd_divergence: str = kd_field("kd_divergence")
    eval_steps: int | None = field(default=None, metadata=_help(
        "Also evaluate every N optimizer steps (always at each epoch end and at the last step)."))
    checkpointing_steps: int | None = field(default=None, metadata=_help(
        "accelerator.save_state to <output_dir>/checkpoint-<step> every N steps (with gpu_hours so far); staged "
        "and published by one rename, so a crash mid-save never leaves a checkpoint-<step> that is resumed."))
    save_total_limit: int | None = field(default=None, metadata=_help(
        "Keep only the newest N checkpoint-<step> folders (older ones are deleted after each save). Unset = all."))
    resume_from_checkpoint: str | None = field(default=None, metadata=_help(
        "A checkpoint-<step> folder, or 'latest' (the highest step in output_dir that is complete); continues "
        "step, data order, optimizer, LR schedule, RNG and gpu_hours."))
    logging_steps: int | None = field(default=100, metadata=_help(
        "Log a training line every N optimizer steps (loss, task/KD loss, learning rate, images/s, gpu_hours, "
        "teacher_time_fraction) and send it to the tracker; 0 = only at evaluations."))
    disable_tqdm: bool = field(default=False, metadata=_help("Hide the progress bar (shown on the main process)."))
    mixed_precision: str | None = field(default=None, metadata=_help(
        f"One of {MIXED_PRECISION}; unset = accelerate's setting (accelerate launch --mixed_precision bf16)."))
    report_to: str = field(default="none", metadata=_help(
        "accelerate tracker for the metrics (tensorboard, wandb, ...); 'none' = metrics.jsonl only."))
    push_to_hub: bool = field(default=False, metadata=_help(
        "At the end, upload the model (model.safetensors, config.json), its model card (README.md) and "
        "metrics.jsonl to the Hub model repo --hub_model_id (created if missing; checkpoints are not uploaded)."))
    hub_model_id: str | None = field(default=None, metadata=_help(
        "Hub repo for --push_to_hub, 'user/name' (or 'name' under your account). Default: output_dir's name."))
    hub_token: str | None = field(default=None, metadata=_help(
        "Hub token for --push_to_hub; default: HF_TOKEN or `hf auth login`. Used for the upload only, never "
        "logged or written to any file."))
    hub_private_repo: bool | None = field(default=None, metadata=_help(
        "Create the Hub repo private (unset = the Hub's default for your account)."))

    def __post_init__(self):
        validate_kd_fields(self)
        positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "max_steps", "epochs", "eval_steps", "checkpointing_steps", "save_total_limit")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value!r} is invalid: expected a positive integer")
        if self.logging_steps is not None and self.logging_steps < 0:
            raise ValueError(f"logging_steps={self.logging_steps!r} is invalid: expected an integer >= 0")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler_type={self.lr_scheduler_type!r} is invalid: expected one of {LR_SCHEDULERS}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is invalid: expected one of {MIXED_PRECISION}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing!r} is invalid: expected a number in [0, 1)")
        check_trackers(self.report_to)  # the package to install, in one line, before model and data set-up
        if self.report_to != "none":
            from accelerate.tracking import get_available_trackers

            available = sorted(str(getattr(t, "value", t)) for t in get_available_trackers())
            if self.report_to not in available:
                raise ValueError(f"report_to={self.report_to!r}: that tracker is not installed here "
                                 f"(available: {available or 'none'}); e.g. pip install tensorboard")

    def resolved_epochs(self, uses_digits: bool) -> int:
        return self.epochs or (15 if uses_digits else 90)

    def tracker_config(self) -> dict:
        """Flat hyperparameters for ``init_trackers`` (trackers accept scalars and strings only); no token."""
        return {k: v if isinstance(v, int | float | str | bool) else str(v)
                for k, v in dataclasses.asdict(self).items() if k != "hub_token"}


def resolve_stop_step(args, max_steps: int) -> int:
    """The KD stop step for ``max_steps`` (both stop flags set must agree, as in the text trainer)."""
    validate_kd_fields(args, max_steps)
    return resolve_kd_stop_step(max_steps, args.kd_stop_ratio, args.kd_stop_steps)


# -- optimizer and LR schedule -----------------------------------------------------------------------------------
NORM_LAYERS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)


def build_optimizer(model: torch.nn.Module, args: VisionTrainingArguments) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum; normalisation layers get ``norm_weight_decay`` when it is set."""
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    if args.norm_weight_decay is None:
        groups = [{"params": params}]
    else:
        groups = [{"params": [p for p in params if id(p) not in norm_ids]},
                  {"params": [p for p in params if id(p) in norm_ids], "weight_decay": args.norm_weight_decay}]
    return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay,
                           nesterov=args.nesterov and args.momentum > 0)


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
              milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Multiplier of the peak LR at optimizer ``step`` (pure, so a resumed run continues the same curve)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind == "step":
        return gamma ** sum(step >= m for m in milestones)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, args: VisionTrainingArguments, total_steps: int,
                       steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine/step/constant as a ``LambdaLR`` over optimizer steps (stepped once per step)."""
    warmup = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_epochs * steps_per_epoch)
    milestones = [e * steps_per_epoch for e in args.lr_step_epochs]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total_steps, warmup, args.lr_scheduler_type, milestones, args.lr_step_gamma))
