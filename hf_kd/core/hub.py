"""Model card and Hub upload for a finished ``run_pretraining`` run (``--push_to_hub``).

| step | when | what |
|---|---|---|
| :func:`take_hub_settings` | before the Trainer is built | moves ``push_to_hub``/``hub_token``/``hub_model_id`` out of the arguments, so the Trainer never opens a Hub repo during training and the token never lands in ``training_args.bin`` |
| :func:`write_model_card` | always, main process | ``README.md`` in ``output_dir``: YAML metadata (tags ``hf-kd``, ``knowledge-distillation``; an ``hf_kd`` block with teachers, KD weight, temperature, stop step, selection, data, steps, GPU-hours) and the same facts as text |
| :func:`push_folder` | only with ``--push_to_hub``, main process | ``create_repo`` + ``upload_folder`` of the model, tokenizer, card and results (no checkpoints, no pickles); a failure is one :class:`HubPushError` line |

The token is used for the upload call only: it is never logged, never written to the card, and scrubbed
from any error message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TAGS = ("hf-kd", "knowledge-distillation")
# Training-only files: resumable checkpoints, pickles (the Hub flags them), tensorboard logs.
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "training_args.bin", "*.pt", "*.pth", "runs/**"]
PAPER = "Blakeney et al. 2022, *Reduce, Reuse, Recycle: Improving Training Efficiency with Distillation*"


class HubPushError(ConnectionError):
    """The upload to the Hub failed (no connection, bad token, no permission); reported in one line."""


@dataclass
class HubSettings:
    """What ``--push_to_hub``, ``--hub_model_id``, ``--hub_token``, ``--hub_private_repo`` asked for."""

    push: bool = False
    repo_id: str | None = None
    private: bool | None = None
    token: str | None = field(default=None, repr=False)  # repr=False: never in a log line


def take_hub_settings(args) -> HubSettings:
    """Take the Hub flags out of ``args`` (the Trainer's own push would open the repo at construction)."""
    settings = HubSettings(push=bool(args.push_to_hub), repo_id=args.hub_model_id,
                           private=getattr(args, "hub_private_repo", None), token=args.hub_token)
    args.push_to_hub = False
    args.hub_token = None
    return settings


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


def card_metadata(trainer, metrics: dict[str, Any], data_args=None) -> dict[str, Any]:
    """The ``hf_kd`` facts of a run, as they go into the card's YAML block."""
    args = trainer.args
    has_kd = bool(trainer.teachers)
    data, _ = training_data(data_args)
    facts = {
        "task": getattr(trainer, "kd_task", "mlm"),
        "teachers": list(trainer.teacher_names),
        "kd_alpha": args.kd_alpha if has_kd else 0.0,
        "kd_temperature": args.kd_temperature,
        "kd_stop_step": trainer.kd_stop_step if has_kd else None,
        "kd_teacher_selection": args.kd_teacher_selection,
        "kd_positions": args.kd_positions,
        "kd_divergence": args.kd_divergence,
        "training_data": data,
        "train_steps": int(trainer.state.global_step),
        "max_steps": int(trainer.state.max_steps),
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "num_processes": int(args.world_size),
        "gpu_hours": float(metrics.get("gpu_hours", trainer.cost_callback.meter.gpu_hours)),
        "eval_gpu_hours": float(metrics.get("eval_gpu_hours", trainer.cost_callback.meter.eval_gpu_hours)),
    }
    for key in ("eval_loss", "perplexity", "eval_accuracy"):
        if key in metrics:
            facts[key] = float(metrics[key])
    return facts


def build_model_card(trainer, metrics: dict[str, Any], data_args=None, repo_id: str | None = None):
    """A ``huggingface_hub.ModelCard`` for the run (metadata + text)."""
    from huggingface_hub import ModelCard, ModelCardData

    facts = card_metadata(trainer, metrics, data_args)
    _, datasets = training_data(data_args)
    pipeline = "text-generation" if facts.get("task") == "clm" else "fill-mask"
    tags = [t for t in TAGS if t != "knowledge-distillation" or facts["teachers"]] + [pipeline]
    data = ModelCardData(library_name="transformers", pipeline_tag=pipeline, tags=tags,
                         datasets=datasets or None, hf_kd=facts)
    name = repo_id or Path(trainer.args.output_dir).name
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_card_text(name, facts)}")


def _card_text(name: str, f: dict[str, Any]) -> str:
    """The human-readable part of the card: the same facts as the YAML block, as a sentence and a table."""
    if f["teachers"]:
        kd = (f"Knowledge distillation from {', '.join(f'`{t}`' for t in f['teachers'])} "
              f"(teacher selection `{f['kd_teacher_selection']}`) for the first {f['kd_stop_step']} of "
              f"{f['train_steps']} optimizer steps, then plain {'causal LM' if f.get('task') == 'clm' else 'MLM'}.")
    else:
        kd = "No teacher: the no-KD baseline, trained through the same loss path."
    rows = [
        ("teachers", ", ".join(f["teachers"]) or "none"),
        ("KD weight (kd_alpha)", f["kd_alpha"]),
        ("temperature", f["kd_temperature"]),
        ("KD stop step", f["kd_stop_step"]),
        ("teacher selection", f["kd_teacher_selection"]),
        ("KD positions / divergence", f"{f['kd_positions']} / {f['kd_divergence']}"),
        ("training data", f["training_data"]),
        ("optimizer steps", f"{f['train_steps']} of {f['max_steps']}"),
        ("global batch", f["global_batch_size"]),
        ("processes (devices)", f["num_processes"]),
        ("GPU-hours (training)", f"{f['gpu_hours']:.4g}"),
        ("GPU-hours (evaluation)", f"{f['eval_gpu_hours']:.4g}"),
    ]
    rows += [(k, f"{f[k]:.4g}") for k in ("eval_loss", "perplexity", "eval_accuracy") if k in f]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if f.get("task") == "clm":
        usage = f'from transformers import pipeline\ngenerate = pipeline("text-generation", model="{name}")'
        what = "A causal language model pretrained with hf-kd (knowledge distillation during next-token pretraining"
    else:
        usage = f'from transformers import pipeline\nfill = pipeline("fill-mask", model="{name}")'
        what = "A BERT-style masked language model pretrained with hf-kd (knowledge distillation during MLM pretraining"
    return (f"# {name}\n\n{what} with a KD cutoff, after {PAPER}). {kd}\n\n"
            f"## Training\n\n| | |\n|---|---|\n{table}\n\n"
            "GPU-hours are training wall-clock x processes (evaluation excluded).\n\n"
            f"## Use\n\n```python\n{usage}\n```\n")


def write_model_card(trainer, metrics: dict[str, Any], data_args=None, repo_id: str | None = None) -> Path | None:
    """Write ``README.md`` into ``output_dir`` (main process only); returns its path there, else ``None``."""
    if not trainer.is_world_process_zero():
        return None
    path = Path(trainer.args.output_dir) / "README.md"
    build_model_card(trainer, metrics, data_args, repo_id).save(path)
    logger.info("model card written to %s", path)
    return path


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Upload a finished run folder to the Hub model repo ``repo_id``; returns the commit URL.

    Raises :class:`HubPushError` (one line, no token) when the Hub cannot be reached or refuses.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 ignore_patterns=UPLOAD_IGNORE, commit_message="Upload hf-kd run")
    except (OSError, HTTPError) as e:  # HTTPError: httpx connection/transport errors; OSError: offline, HTTP status
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if token:
            detail = detail.replace(token, "***")
        raise HubPushError(f"could not push {str(folder)!r} to the Hub repo {repo_id!r} at {constants.ENDPOINT} "
                           f"({type(e).__name__}: {detail}); the folder is complete -- upload it later with "
                           f"`hf upload {repo_id} {folder}`") from e
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s", folder, url)
    return url


def publish_run(trainer, metrics: dict[str, Any], data_args, hub: HubSettings) -> None:
    """End of ``run_pretraining``: the model card always; the upload only when ``--push_to_hub`` was given."""
    repo_id = hub.repo_id or Path(trainer.args.output_dir).absolute().name
    write_model_card(trainer, metrics, data_args, repo_id if hub.push else None)
    if hub.push and trainer.is_world_process_zero():
        push_folder(trainer.args.output_dir, repo_id, token=hub.token, private=hub.private)
