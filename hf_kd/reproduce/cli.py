"""``hf-kd reproduce``: its arguments and the dispatch to the text, vision or real-scale protocol."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..core.cli_utils import UserError, parse_args
from ..core.paths import check_output_dir_creatable
from ..core.trackers import check_trackers
from .glue import GlueSettings

GLUE_DEFAULTS = GlueSettings(glue_dir="")

PRESET_NAMES = ("tiny", "gpu-small", "bert-base-c4")
TASK_NAMES = ("mlm", "clm", "vision", "text")  # "text": the name "mlm" had before --task clm existed


@dataclass
class ReproduceArguments:
    preset: str = field(default="tiny", metadata={
        "help": "'tiny' (CPU, offline, built-in corpus), 'gpu-small' (one GPU, ~1 h: BERT-small on C4 streaming with "
                "a recycled BERT-medium teacher) or 'bert-base-c4' (the real-scale commands; --launch runs them). "
                "--task clm and vision: 'tiny' only.", "choices": PRESET_NAMES})
    task: str = field(default="mlm", metadata={
        "help": "'mlm' (masked LM: tiny BERT, held-out masked-token loss; 'text' is the same), 'clm' (causal LM: "
                "tiny GPT-2, held-out next-token loss) or 'vision' (ResNet on digits).", "choices": TASK_NAMES})
    corpus: str | None = field(default=None, metadata={"help": "Local .txt/.jsonl to use instead of the preset's "
                                                                "corpus (the built-in one, or C4 for gpu-small)."})
    seeds: int | None = field(default=None, metadata={
        "help": "Run every variant with seeds 0..N-1 (default: 3 for tiny, 2 for gpu-small); speed-ups are paired "
                "per seed and a verdict needs the spread (1 seed: always inconclusive)."})
    full: bool = field(default=False, metadata={"help": "Run every variant (adds the poor teacher, the ensembles "
                                                        "and the 0.5x frontier point) instead of the default set."})
    workers: int = field(default=2, metadata={"help": "Trainings run side by side in this many processes (CPU; "
                                                      "gpu-small and streamed corpora use 1)."})
    threads: int = field(default=1, metadata={"help": "Torch threads per training process."})
    output_dir: str = field(default="runs/reproduce", metadata={"help": "Where results.json/.md and PNGs go; rerun "
                                                                        "with the same one to resume."})
    steps: int | None = field(default=None, metadata={
        "help": "Override the students' step budget; teachers, evaluation interval and, below the preset's budget, "
                "the calibration and the validation set scale with it. For quick looks, not for claims: --task clm "
                "--steps 24 took 2 min 32 s from an empty cache on 2 nearly idle cores (3.7 min estimated; 8 min 15 s "
                "at load 4-5), the 120-step default about 12 min. The plan line logs the time estimate before "
                "training."})
    only: list[str] | None = field(default=None, metadata={"help": "Run only these variants (and the baselines); "
                                                                   "an unknown name is an error listing them. With "
                                                                   "--study: only these cells."})
    override: list[str] | None = field(default=None, metadata={
        "help": "KEY=VALUE pairs replacing preset fields, e.g. a CPU rehearsal of gpu-small: model_preset=tiny "
                "batch_size=4 tokenizer_name=PATH recycled_teacher=PATH streaming=false bf16=false."})
    report_to: str = field(default="none", metadata={
        "help": "Tracker for every student's Trainer run (tensorboard, wandb, ...: transformers' --report_to values; "
                "text and clm tasks), logged under each run's folder. 'none': the report files only."})
    teacher_outputs: str | None = field(default=None, metadata={
        "help": "'cached' (text default): each teacher's outputs are computed once per seed's training stream "
                "(hf-kd cache-teacher's format, top-64) and every KD student of that seed reads them; the report "
                "shows three cost views (live, amortised: verdicts, sunk) and kd_full_live, KD throughout with a live "
                "teacher, for the quality at equal steps. 'live' (vision default): a teacher forward at every KD "
                "step, the paper's protocol.", "choices": ("cached", "live")})
    study: bool = field(default=False, metadata={
        "help": "Run the regime study (where KD pays: budget, teacher strength, KD positions, alpha/T; "
                "docs/regime_study.md) into --output_dir; --only picks cells, --rerender [--check] rebuilds it."})
    launch: bool = field(default=False, metadata={"help": "bert-base-c4: run the printed commands (resumable)."})
    glue: str | None = field(default=None, metadata={
        "help": "A folder of the original GLUE files (<DIR>/SST-2/train.tsv, dev.tsv, ...): after training, fine-tune "
                "every student's and frontier run's final model through glue_eval's sweep (per pretraining seed, "
                "reusing finished fine-tunes) and add GLUE scores, frontier speed-ups and verdicts to the report. "
                "--task mlm only."})
    glue_tasks: str = field(default=GLUE_DEFAULTS.tasks, metadata={"help": "With --glue: comma-separated tasks."})
    glue_seeds: list[int] = field(default_factory=lambda: list(GLUE_DEFAULTS.seeds),
                                  metadata={"help": "With --glue: fine-tuning seeds of every final model."})
    glue_max_train_samples: int | None = field(default=GLUE_DEFAULTS.max_train_samples, metadata={
        "help": "With --glue: training rows per task (0: all)."})
    glue_epochs: float = field(default=GLUE_DEFAULTS.epochs, metadata={"help": "With --glue: fine-tuning epochs."})
    glue_max_steps: int | None = field(default=None, metadata={"help": "With --glue: fine-tuning steps instead of "
                                                                       "--glue_epochs."})
    glue_learning_rate: float | None = field(default=GLUE_DEFAULTS.learning_rate, metadata={
        "help": "With --glue: fine-tuning learning rate of every task (unset: glue_eval's per-task table, rates for "
                "BERT-size models)."})
    rerender: bool = field(default=False, metadata={"help": "Only rebuild results.md/.json and the plots of a "
                                                            "finished --output_dir from its runs' logs."})
    check: bool = field(default=False, metadata={"help": "With --rerender: write nothing, exit 2 if results.md "
                                                         "does not follow from the run logs in results.json."})


def _validate(a: ReproduceArguments) -> None:
    if a.task == "text":
        a.task = "mlm"
    for flag in ("seeds", "workers", "threads", "steps"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            raise UserError(f"--{flag} {getattr(a, flag)} is invalid: expected an integer >= 1")
    # --preset and --task outside their choices are refused by the parser (one line, listing them)
    if a.study and (a.task != "mlm" or a.preset != "tiny"):
        raise UserError(f"--study with --task {a.task} --preset {a.preset} is invalid: expected --task mlm --preset "
                        "tiny (the study varies the tiny MLM protocol)")
    if a.task == "vision" and a.teacher_outputs == "cached":
        raise UserError("--teacher_outputs cached with --task vision is invalid: expected live (teacher-output "
                        "caches serve the text tasks)")
    if a.teacher_outputs is None:
        a.teacher_outputs = "live" if a.task == "vision" else "cached"
    if a.glue is not None and not a.rerender:
        _validate_glue(a)
    if a.task in ("clm", "vision") and a.preset != "tiny" and not a.rerender:
        raise UserError(f"--preset {a.preset!r} with --task {a.task} is invalid: expected --preset tiny (the "
                        "other presets are MLM protocols)")


def _validate_glue(a: ReproduceArguments) -> None:
    if a.task != "mlm" or a.study or a.preset == "bert-base-c4":
        what = f"--task {a.task}" if a.task != "mlm" else "--study" if a.study else "--preset bert-base-c4"
        raise UserError(f"--glue with {what} is invalid: expected --task mlm with --preset tiny or gpu-small "
                        "(GLUE fine-tunes the MLM students)")
    for flag in ("glue_max_train_samples", "glue_epochs", "glue_max_steps", "glue_learning_rate"):
        if getattr(a, flag) is not None and getattr(a, flag) < (0 if flag == "glue_max_train_samples" else 1e-9):
            raise UserError(f"--{flag} {getattr(a, flag)} is invalid: expected a positive number")
    if not a.glue_seeds:
        raise UserError("--glue_seeds is empty: expected one or more integers, e.g. 0 1 2")


def _glue_settings(a: ReproduceArguments) -> GlueSettings | None:
    """The GLUE sweep's settings, its folder checked by glue_eval itself: refused before any training."""
    if a.glue is None:
        return None
    import torch

    from .glue import check_glue_dir

    check_glue_dir(a.glue, a.glue_tasks)
    return GlueSettings(str(Path(a.glue).resolve()), a.glue_tasks, tuple(a.glue_seeds),
                        a.glue_max_train_samples or None, a.glue_epochs, a.glue_max_steps, a.glue_learning_rate,
                        use_cpu=not torch.cuda.is_available())


def _protocol(a: ReproduceArguments) -> dict:
    """The task's back end from its preset (with --override / --steps), run through the one protocol."""
    from ..core.teachers import check_model_reference
    from .calibrate import calibration_size
    from .presets import DEFAULT_SEEDS, PRESETS, apply_overrides, scale_steps
    from .protocol import select_variants
    from .run import run_protocol

    glue = _glue_settings(a)
    base = PRESETS[a.task][a.preset]
    p = apply_overrides(base, a.override)
    if getattr(p, "recycled_teacher", None):  # a mistyped path: one line now, not a Hub error after the corpus
        check_model_reference(p.recycled_teacher, "--override recycled_teacher")
    if a.steps:
        p = scale_steps(p, a.steps)
    select_variants(p.frontier, a.only, a.full, a.teacher_outputs)  # a mistyped --only fails before any data loads
    # a quick look (--steps below the preset's) times fewer calibration steps, as it trains fewer
    rounds = calibration_size(p.steps / base.steps)
    if a.task == "vision":
        from .vision import VisionBackend

        backend, workers = VisionBackend(p), 1  # each run uses the accelerate state of the process
    else:
        from .text import TextBackend

        backend = TextBackend(p, a.corpus, a.report_to)
        workers = 1 if p.streaming or a.preset == "gpu-small" else a.workers
    return run_protocol(backend, a.output_dir, a.seeds or DEFAULT_SEEDS[a.preset], a.only, full=a.full,
                        workers=workers, threads=a.threads, calibration_rounds=rounds, teacher_outputs=a.teacher_outputs,
                        glue=glue)


def _text_backend(a: ReproduceArguments):
    """Builds the study cells' back ends (the study itself imports no task)."""
    from .text import TextBackend

    return lambda preset, corpus_path: TextBackend(preset, corpus_path, a.report_to)


@contextmanager
def _no_empty_folder_left(folder: Path | None):
    """On any failure, remove ``folder`` if this command created it and nothing was written into it: a refusal
    raised after the folder was made (a bad model setting found while the models are built, ...) leaves nothing
    behind, while a folder holding finished work (what a rerun resumes from) is kept."""
    existed = folder is None or folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _run(a: ReproduceArguments) -> dict:
    if a.study:
        from . import study

        out = Path(a.output_dir)
        if a.rerender:
            return study.check(out) if a.check else study.render(out)
        return study.run_study(a.output_dir, a.seeds or 3, a.workers, a.threads, only_cells=a.only,
                               backend_for=_text_backend(a))
    if a.rerender:
        from .report import rerender

        return rerender(a.output_dir, check=a.check)
    if a.preset == "bert-base-c4":
        from .scale import bert_base_c4

        return bert_base_c4(a.output_dir, launch_it=a.launch)
    return _protocol(a)


def reproduce(argv: list[str] | None = None) -> dict | None:
    (a,) = parse_args((ReproduceArguments,), argv, prog="hf-kd reproduce")
    _validate(a)
    check_trackers(a.report_to)  # before any teacher trains, not when the first student's Trainer is built
    # --rerender reads a finished folder; bert-base-c4 without --launch only prints commands
    writes = not a.rerender and (a.preset != "bert-base-c4" or a.launch)
    if writes:
        check_output_dir_creatable(a.output_dir)  # under a file, under /proc...: one line, before any work
    with _no_empty_folder_left(Path(a.output_dir) if writes else None):
        results = _run(a)
    print(results["markdown"])
    if results["plots"]:
        name = "study" if a.study else "results"
        print(f"results: {a.output_dir}/{name}.json, {a.output_dir}/{name}.md, plots: {', '.join(results['plots'])}")
    return results
