"""Hub upload shared by the tasks (``--push_to_hub``); each task writes its own model card (``hf_kd.text.card``,
``hf_kd.vision.card``).

| step | when | what |
|---|---|---|
| :func:`take_hub_settings` | before the Trainer is built | moves ``push_to_hub``/``hub_token``/``hub_model_id`` out of the arguments, so the Trainer never opens a Hub repo during training and the token never lands in ``training_args.bin``; refuses a ``--hub_strategy`` other than ``end``, and ``--push_to_hub`` in offline mode (``HF_HUB_OFFLINE``) |
| ``hf_kd.text.card.write_model_card`` (text; ``hf_kd.vision.card`` for vision) | always, main process | ``README.md`` in ``output_dir``: YAML metadata (tags ``hf-kd``, ``knowledge-distillation``; an ``hf_kd`` block with teachers, and, when a teacher ran, KD weight, temperature, stop step, selection; data, steps, GPU-hours; a ``model-index`` with the final evaluation) and the same facts as text, a usage line naming ``--hub_model_id`` (else a placeholder to fill in), and what ``Trainer.create_model_card`` writes (hyperparameters, evaluation log, framework versions) |
| :func:`push_folder` | only with ``--push_to_hub``, main process | ``create_repo`` + ``upload_folder`` of the model, tokenizer, card and results (no checkpoints, no pickles); a failure is one :class:`HubPushError` line |

The token is used for the upload call only: it is never logged, never written to the card, and scrubbed
from any error message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

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


SUPPORTED_HUB_STRATEGIES = ("end",)


def take_hub_settings(args) -> HubSettings:
    """Take the Hub flags out of ``args`` (the Trainer's own push would open the repo at construction).

    The upload happens once, after training (``--hub_strategy end``); other strategies are refused up front
    rather than silently ignored.
    """
    strategy = getattr(getattr(args, "hub_strategy", "end"), "value", getattr(args, "hub_strategy", "end"))
    if args.push_to_hub and strategy not in SUPPORTED_HUB_STRATEGIES:
        raise UserError(f"--hub_strategy {strategy!r} is not supported: hf-kd uploads the finished run once; "
                        f"expected one of {SUPPORTED_HUB_STRATEGIES} (upload checkpoints yourself with `hf upload`)")
    if args.push_to_hub:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:  # read at call time: the upload would fail only after the whole training
            raise UserError("--push_to_hub needs the Hub, but offline mode is on (HF_HUB_OFFLINE=1); expected "
                            "HF_HUB_OFFLINE unset, or no --push_to_hub (upload the folder later with `hf upload`)")
    settings = HubSettings(push=bool(args.push_to_hub), repo_id=args.hub_model_id,
                           private=getattr(args, "hub_private_repo", None), token=args.hub_token)
    args.push_to_hub = False
    args.hub_token = None
    return settings


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


def hours_label(device: str | None) -> str:
    """How the cost is named for people: ``GPU-hours`` on CUDA, ``CPU-hours`` on the CPU, ``device-hours`` when
    unknown. The key stays ``gpu_hours`` everywhere (the documented contract); only the words say the device."""
    names = {"cuda": "GPU", "cpu": "CPU", "mps": "MPS", "xpu": "XPU", "npu": "NPU"}
    return f"{names.get(device or '', 'device')}-hours"


def cost_note(device: str | None) -> str:
    """The card's sentence defining the cost column."""
    return (f"{hours_label(device)} (the `gpu_hours` key{'' if device == 'cuda' else f', here spent on {device}'}): "
            "each interval's training wall-clock x the processes running then (evaluation excluded)"
            if device else "device-hours (the `gpu_hours` key): each interval's training wall-clock x the processes "
            "running then (evaluation excluded)")


def run_card_rows(f: dict[str, Any]) -> list[tuple[str, Any]]:
    """The model-card table rows every task shares: data, steps, batch, processes and the two cost rows, named
    after the device they were spent on (``f["device"]``: ``cuda``, ``cpu``, ...)."""
    label = hours_label(f.get("device"))
    return [
        ("training data", f["training_data"]),
        ("optimizer steps", f"{f['train_steps']} of {f['max_steps']}"),
        ("global batch", f["global_batch_size"]),
        ("processes (devices)", f"{f['num_processes']}" + (f" ({f['device']})" if f.get("device") else "")),
        (f"{label} (training)", f"{f['gpu_hours']:.4g}"),
        (f"{label} (evaluation)", f"{f['eval_gpu_hours']:.4g}"),
    ]
