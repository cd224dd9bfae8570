"""Fine-tune one checkpoint on GLUE and report its two GLUE scores (console script ``hf-kd-glue``).

On a folder of the original GLUE download (a CPU smoke run; ``--glue_dir`` is a folder you provide)::

    python -m glue_eval.run_glue --model_name_or_path runs/kd --tasks rte,mrpc --seeds 0 1 2 \\
        --glue_dir data/glue --max_train_samples 256 --max_steps 20 --use_cpu --output_dir glue/kd

Full GLUE on GPUs, data from the Hub's ``nyu-mll/glue``, BERT's protocol (lr grid, best on dev)::

    accelerate launch --num_processes 8 -m glue_eval.run_glue --model_name_or_path runs/kd --tasks all \\
        --seeds 0 1 2 --learning_rates 2e-5 3e-5 4e-5 5e-5 --num_train_epochs 3 --bf16 --output_dir glue/kd

Every ``TrainingArguments`` flag applies to the fine-tunes (``glue_eval.args``). Writes
``<output_dir>/results.jsonl`` (one line per fine-tune; a rerun skips finished ones) and
``<output_dir>/summary.json``: per-task mean/std over seeds, the GLUE average (BERT Table 1) and the GLUE
score (leaderboard), the protocol, and the diverged fine-tunes (left out of the averages, marked ``*``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hf_kd.core.cli_utils import run_cli
from hf_kd.core.curves import mean_std

from .args import FinetuneArguments, GlueArguments, parse_glue_args
from .finetune import run_jobs
from .metrics import glue_average, glue_leaderboard_score
from .plan import plan_model, validate
from .quality import line_diverged, select_lines
from .results import ResultsFile, check_run_names

logger = logging.getLogger(__name__)


@dataclass
class RunGlueArguments:
    """The checkpoint to fine-tune (``--output_dir``, ``--run_name`` are ``TrainingArguments``')."""

    model_name_or_path: str = field(metadata={"help": "Pretrained checkpoint folder (or Hub id) to fine-tune. Its "
                                              "name in the results: --run_name, default the folder's name."})


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _score_summary(averages: dict) -> dict:
    mean, std, n = mean_std([a.value for a in averages.values()])
    diverged = sorted({t for a in averages.values() for t in a.diverged})
    labels = [a for a in averages.values() if a.diverged] or list(averages.values())
    return {"mean": mean, "std": std, "n_seeds": n, "what": labels[0].label if labels else "",
            "diverged": diverged, "per_seed": {str(s): a.value for s, a in averages.items()}}


def summarize(records: list[dict]) -> dict:
    """Per-task mean/std of each metric over seeds, both GLUE scores per seed and over seeds, diverged lines.

    A diverged line counts as that task diverged for its seed: left out of the task's statistics and of
    that seed's GLUE scores (the label says so).
    """
    by_seed: dict[int, dict[str, dict]] = {}
    tasks: dict[str, dict] = {}
    diverged = []
    for r in records:
        bad = line_diverged(r)
        by_seed.setdefault(r["seed"], {})[r["task"]] = {k: None for k in r["metrics"]} if bad else r["metrics"]
        if bad:
            diverged.append(f"{r['task']} seed {r['seed']}")
            tasks.setdefault(r["task"], {})
            continue
        for k, v in r["metrics"].items():
            tasks.setdefault(r["task"], {}).setdefault(k, []).append(v)
    per_task = {t: {k: dict(zip(("mean", "std", "n"), mean_std(v))) for k, v in m.items()} for t, m in tasks.items()}
    return {"tasks": per_task, "diverged": diverged,
            "glue_average": _score_summary({s: glue_average(m) for s, m in sorted(by_seed.items())}),
            "glue_score": _score_summary({s: glue_leaderboard_score(m) for s, m in sorted(by_seed.items())})}


def format_summary(summary: dict) -> str:
    lines = ["| task | metric | mean | std | seeds |", "|---|---|---|---|---|"]
    for task, metrics in summary["tasks"].items():
        for k, s in metrics.items():
            if s["mean"] is not None:
                lines.append(f"| {task} | {k} | {s['mean']:.4f} | {s['std']:.4f} | {s['n']} |")
        bad = [d.split(" seed ")[1] for d in summary["diverged"] if d.split(" seed ")[0] == task]
        if bad:
            lines.append(f"| {task} | diverged | | | seed {', '.join(bad)} |")
    for key in ("glue_average", "glue_score"):
        g = summary[key]
        if g["mean"] is not None:
            lines.append(f"\n**{g['what']}: {g['mean']:.2f} ± {g['std']:.2f}** ({g['n_seeds']} seeds)")
        elif g["diverged"]:
            lines.append(f"\n**{g['what']}: no value** (no task left that did not diverge)")
    if summary["diverged"]:
        lines.append("\n\\* diverged fine-tunes (non-finite loss or metrics), left out of the averages: "
                     + ", ".join(summary["diverged"]))
    if summary.get("protocol"):
        lines.append(f"\nFine-tuning protocol: {summary['protocol']}")
    return "\n".join(lines)


def evaluate_on_glue(model_name_or_path: str, gargs: GlueArguments, fargs: FinetuneArguments,
                     run_name: str | None = None) -> dict:
    """Validate everything, fine-tune every (task, seed[, lr]) not yet done, write and return the summary."""
    tasks = validate(gargs, fargs)
    name = run_name or Path(model_name_or_path.rstrip("/")).name
    out = Path(fargs.output_dir)
    main_proc = is_main_process()
    results = ResultsFile(out / "results.jsonl", writer=main_proc)
    path = str(Path(model_name_or_path).resolve()) if Path(model_name_or_path).is_dir() else model_name_or_path
    check_run_names(results.records, {name: path}, str(results.path))
    record = {"run": name, "checkpoint": "final", "run_path": path}
    jobs = plan_model(model_name_or_path, record, gargs, fargs, tasks, out / "work")
    run_jobs(jobs, gargs, fargs, results, show_progress=main_proc)
    hashes = {j.line["config_hash"] for j in jobs}
    mine = [r for r in results.records if r.get("config_hash") in hashes and r["run"] == name
            and r["seed"] in gargs.seeds]
    kept, info = select_lines(mine)
    summary = {**summarize(kept), "protocol": info["protocol"],
               "selected_learning_rates": {k[2]: lr for k, lr in info["selected"].items()}}
    if main_proc:
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def main(argv: list[str] | None = None) -> dict | int:
    """With ``argv`` (tests): the summary, errors raised. Without (console): exit status, errors in one line."""
    if argv is None:
        return run_cli(lambda: main(sys.argv[1:]))
    rargs, gargs, fargs = parse_glue_args((RunGlueArguments,), argv)
    run_name = fargs.run_name if "run_name" in fargs.given else None
    summary = evaluate_on_glue(rargs.model_name_or_path, gargs, fargs, run_name)
    if is_main_process():  # the CLI shows the table; the library function only writes summary.json
        print(format_summary(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main())
