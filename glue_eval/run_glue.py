"""Fine-tune one checkpoint on GLUE and report its GLUE average (console script ``hf-kd-glue``).

Offline, on the original GLUE files (a CPU smoke run)::

    python -m glue_eval.run_glue --model_name_or_path runs/kd --tasks rte,mrpc --seeds 0 1 2 \\
        --glue_dir ../shared/data/glue --max_train_samples 256 --max_steps 20 --output_dir glue/kd

Full GLUE, BERT recipe, on GPUs (data from the Hub's ``nyu-mll/glue``)::

    accelerate launch --num_processes 8 -m glue_eval.run_glue --model_name_or_path runs/bert-base-kd \\
        --tasks all --seeds 0 1 2 --bf16 --output_dir glue/bert-base-kd

Writes ``<output_dir>/results.jsonl`` (one line per task and seed; a rerun skips finished ones) and
``<output_dir>/summary.json`` (per-task mean/std over seeds and the GLUE average, BERT convention).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hf_kd.core.cli_utils import parse_args, run_cli
from hf_kd.core.curves import mean_std

from .finetune import FinetuneArguments, evaluate_model
from .metrics import glue_average
from .results import ResultsFile

logger = logging.getLogger(__name__)


@dataclass
class RunGlueArguments:
    model_name_or_path: str = field(metadata={"help": "Pretrained checkpoint folder (or Hub id) to fine-tune."})
    output_dir: str = field(metadata={"help": "Where results.jsonl, summary.json and work folders go."})
    run_name: str | None = field(default=None, metadata={"help": "Name in the results (default: the model "
                                                         "folder's name)."})


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def summarize(records: list[dict]) -> dict:
    """Per-task mean/std of each metric over seeds, and the GLUE average per seed and over seeds."""
    by_seed: dict[int, dict[str, dict]] = {}
    for r in records:
        by_seed.setdefault(r["seed"], {})[r["task"]] = r["metrics"]
    tasks: dict[str, dict] = {}
    for r in records:
        for k, v in r["metrics"].items():
            tasks.setdefault(r["task"], {}).setdefault(k, []).append(v)
    per_task = {t: {k: dict(zip(("mean", "std", "n"), mean_std(v))) for k, v in m.items()} for t, m in tasks.items()}
    averages = {s: glue_average(m) for s, m in sorted(by_seed.items())}
    mean, std, n = mean_std([a.value for a in averages.values()])
    label = next(iter(averages.values())).label if averages else ""
    return {"tasks": per_task, "glue_average": {"mean": mean, "std": std, "n_seeds": n, "what": label,
                                                "per_seed": {str(s): a.value for s, a in averages.items()}}}


def format_summary(summary: dict) -> str:
    lines = ["| task | metric | mean | std | seeds |", "|---|---|---|---|---|"]
    for task, metrics in summary["tasks"].items():
        for k, s in metrics.items():
            if s["mean"] is not None:
                lines.append(f"| {task} | {k} | {s['mean']:.4f} | {s['std']:.4f} | {s['n']} |")
    g = summary["glue_average"]
    if g["mean"] is not None:
        lines.append(f"\n**{g['what']}: {g['mean']:.2f} ± {g['std']:.2f}** ({g['n_seeds']} seeds)")
    return "\n".join(lines)


def run(gargs: RunGlueArguments, fargs: FinetuneArguments) -> dict:
    """Validate everything, then fine-tune every (task, seed) not yet done; returns the summary."""
    tasks = fargs.validate()
    name = gargs.run_name or Path(gargs.model_name_or_path.rstrip("/")).name
    out = Path(gargs.output_dir)
    main_proc = is_main_process()
    results = ResultsFile(out / "results.jsonl", writer=main_proc)
    record = {"run": name, "checkpoint": "final"}
    evaluate_model(gargs.model_name_or_path, fargs, results, record, out / "work", tasks)
    mine = [r for r in results.records if r["run"] == name and r["checkpoint"] == "final" and r["task"] in tasks
            and r["seed"] in fargs.seeds]
    summary = summarize(mine)
    if main_proc:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        print(format_summary(summary))
    return summary


def main(argv: list[str] | None = None) -> dict | int:
    """With ``argv`` (tests): the summary, errors raised. Without (console): exit status, errors in one line."""
    if argv is None:
        return run_cli(lambda: main(sys.argv[1:]))
    gargs, fargs = parse_args((RunGlueArguments, FinetuneArguments), argv)
    return run(gargs, fargs)


if __name__ == "__main__":
    sys.exit(main())
