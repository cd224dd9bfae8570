"""Model card of a finished ``run_pretraining`` run (MLM or causal LM), and its upload (``--push_to_hub``).

The card: YAML metadata (tags, an ``hf_kd`` block of KD facts, a ``model-index`` with the final evaluation), the
same facts as text, a usage line and what ``Trainer.create_model_card`` writes. The Hub side (settings taken
out of the arguments, the upload) is shared with vision: :mod:`hf_kd.core.hub`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.hub import PAPER, TAGS, HubSettings, cost_note, push_folder, run_card_rows

if TYPE_CHECKING:
    from huggingface_hub import ModelCard
    from transformers import Trainer

logger = logging.getLogger(__name__)


def training_data(data_args) -> tuple[str, list[str]]:
    """(description, Hub dataset ids) of the training text."""
    if data_args is None:
        return "unknown", []
    if data_args.dataset_name:
        config = f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""
        return f"{data_args.dataset_name}{config}", [data_args.dataset_name]
    if data_args.train_file:
        return f"local file {Path(data_args.train_file).name}", []
    return "built-in corpus (Python standard-library documentation, hf_kd.text.corpus)", []


EVAL_KEYS = ("eval_loss", "perplexity", "eval_accuracy")


def kd_positions_fact(task: str, kd_positions: str) -> str:
    """``kd_positions`` as the card states it: "masked" means something only for an MLM; for a causal LM the same
    setting is KD at the labelled next-token positions, and "all" adds every position with a real next token."""
    if task != "clm":
        return kd_positions
    return "labelled next tokens" if kd_positions == "masked" else "every next token"


def card_metadata(trainer, metrics: dict[str, Any], data_args=None) -> dict[str, Any]:
    """The ``hf_kd`` facts of a run, as they go into the card's YAML block (``kd_*`` only when a teacher ran)."""
    args = trainer.args
    facts: dict[str, Any] = {"task": getattr(trainer, "kd_task", "mlm"), "teachers": list(trainer.teacher_names)}
    if trainer.teacher_names:
        facts.update(kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature, kd_stop_step=trainer.kd_stop_step,
                     kd_teacher_selection=args.kd_teacher_selection, kd_positions=kd_positions_fact(facts["task"],
                                                                                                  args.kd_positions),
                     kd_divergence=args.kd_divergence)
    facts.update({
        "training_data": training_data(data_args)[0],
        "train_steps": int(trainer.state.global_step),
        "max_steps": int(trainer.state.max_steps),
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "num_processes": int(args.world_size),
        "device": args.device.type,
        "gpu_hours": float(metrics.get("gpu_hours", trainer.cost_callback.meter.gpu_hours)),
        "eval_gpu_hours": float(metrics.get("eval_gpu_hours", trainer.cost_callback.meter.eval_gpu_hours)),
    })
    facts.update({k: float(metrics[k]) for k in EVAL_KEYS if k in metrics})
    return facts


def usage_name(output_dir: str, repo_id: str | None) -> tuple[str, str]:
    """(Hub id for the usage line, note): ``repo_id`` when it names ``org/name``, else a placeholder to fill in."""
    if repo_id and "/" in repo_id:
        return repo_id, ""
    hub_id = f"<your-username>/{repo_id or Path(output_dir).absolute().name}"
    note = (f"`{hub_id}` is a placeholder: replace it with the repo you upload this folder to "
            f"(`hf upload {hub_id} {output_dir}`, or train with `--push_to_hub --hub_model_id`).")
    return hub_id, note


def build_model_card(trainer: Trainer, metrics: dict[str, Any], data_args=None, repo_id: str | None = None) -> ModelCard:
    """A ``huggingface_hub.ModelCard`` for the run: YAML metadata (tags, ``hf_kd`` facts, model-index) + text."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    facts = card_metadata(trainer, metrics, data_args)
    data_name, datasets = training_data(data_args)
    pipeline = "text-generation" if facts["task"] == "clm" else "fill-mask"
    tags = [t for t in TAGS if t != "knowledge-distillation" or facts["teachers"]] + [pipeline]
    name = repo_id or Path(trainer.args.output_dir).absolute().name
    results = [EvalResult(task_type=pipeline, dataset_type=(datasets or ["text"])[0], dataset_name=data_name,
                          metric_type=k, metric_value=facts[k]) for k in EVAL_KEYS if k in facts]
    data = ModelCardData(library_name="transformers", pipeline_tag=pipeline, tags=tags, datasets=datasets or None,
                         model_name=name, eval_results=results or None, hf_kd=facts)
    body = _card_text(name, facts) + _usage_text(trainer.args.output_dir, repo_id, pipeline) + _trainer_sections(trainer)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _card_text(name: str, f: dict[str, Any]) -> str:
    """The human-readable KD facts: the same as the YAML block, as a sentence and a table."""
    rows: list[tuple[str, Any]] = []
    if f["teachers"]:
        kd = (f"Knowledge distillation from {', '.join(f'`{t}`' for t in f['teachers'])} "
              f"(teacher selection `{f['kd_teacher_selection']}`) for the first {f['kd_stop_step']} of "
              f"{f['train_steps']} optimizer steps, then plain {'causal LM' if f['task'] == 'clm' else 'MLM'}.")
        rows += [("teachers", ", ".join(f["teachers"])), ("KD weight (kd_alpha)", f["kd_alpha"]),
                 ("temperature", f["kd_temperature"]), ("KD stop step", f["kd_stop_step"]),
                 ("teacher selection", f["kd_teacher_selection"]),
                 ("KD positions / divergence", f"{f['kd_positions']} / {f['kd_divergence']}")]
    else:
        kd = "No teacher: the no-KD baseline, trained through the same loss path."
        rows.append(("teachers", "none (no KD)"))
    rows += run_card_rows(f)
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    evals = "\n".join(f"- {k}: {f[k]:.4g}" for k in EVAL_KEYS if k in f)
    if f["task"] == "clm":
        what, held_out = "A causal language model pretrained with hf-kd (knowledge distillation during next-token", "next-token"
    else:
        what, held_out = "A BERT-style masked language model pretrained with hf-kd (knowledge distillation during MLM", "MLM"
    return (f"# {name}\n\n{what} pretraining with a KD cutoff, after {PAPER}). {kd}\n\n"
            f"## Training\n\n| | |\n|---|---|\n{table}\n\n"
            f"{cost_note(f.get('device'))}.\n\n"
            + (f"## Evaluation results (held-out {held_out})\n\n{evals}\n\n" if evals else ""))


def _usage_text(output_dir: str, repo_id: str | None, pipeline: str = "fill-mask") -> str:
    hub_id, note = usage_name(output_dir, repo_id)
    var = "generate" if pipeline == "text-generation" else "fill"
    code = (f'from transformers import pipeline\n\n{var} = pipeline("{pipeline}", model="{hub_id}")  # from the Hub\n'
            f'{var} = pipeline("{pipeline}", model="{output_dir}")  # the run folder, where it was trained')
    return f"## Use\n\n```python\n{code}\n```\n\n" + (f"{note}\n\n" if note else "")


def _trainer_sections(trainer) -> str:
    """What ``Trainer.create_model_card`` adds: hyperparameters, the evaluation log, framework versions."""
    import datasets
    import tokenizers
    import torch
    import transformers
    from transformers.modelcard import extract_hyperparameters_from_trainer, make_markdown_table, parse_log_history

    hp = "\n".join(f"- {k}: {v}" for k, v in extract_hyperparameters_from_trainer(trainer).items())
    # At an evaluation, gpu_hours is the training cost so far (a column worth having, under a clear name);
    # eval_gpu_hours is evaluation cost, not a quality metric.
    history = [{("eval_training gpu-hours" if k == "gpu_hours" and "eval_loss" in e else k): v
                for k, v in e.items() if k != "eval_gpu_hours"} for e in trainer.state.log_history]
    _, eval_lines, _ = parse_log_history(history)
    log = f"### Training results\n\n{make_markdown_table(eval_lines)}\n\n" if eval_lines else ""
    versions = "\n".join(f"- {n} {m.__version__}" for n, m in (("Transformers", transformers), ("Pytorch", torch),
                                                               ("Datasets", datasets), ("Tokenizers", tokenizers)))
    return (f"## Training procedure\n\n### Training hyperparameters\n\n{hp}\n\n{log}"
            f"### Framework versions\n\n{versions}\n")


def write_model_card(trainer, metrics: dict[str, Any], data_args=None, repo_id: str | None = None) -> Path | None:
    """Write ``README.md`` into ``output_dir`` (main process only); returns its path there, else ``None``."""
    if not trainer.is_world_process_zero():
        return None
    path = Path(trainer.args.output_dir) / "README.md"
    build_model_card(trainer, metrics, data_args, repo_id).save(path)
    logger.info("model card written to %s", path)
    return path


def publish_run(trainer, metrics: dict[str, Any], data_args, hub: HubSettings) -> None:
    """End of ``run_pretraining``: the model card always; the upload only when ``--push_to_hub`` was given."""
    write_model_card(trainer, metrics, data_args, hub.repo_id)
    if hub.push and trainer.is_world_process_zero():
        repo_id = hub.repo_id or Path(trainer.args.output_dir).absolute().name  # the Hub puts it under your user
        push_folder(trainer.args.output_dir, repo_id, token=hub.token, private=hub.private)
