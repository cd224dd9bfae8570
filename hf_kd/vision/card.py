"""The model card of a finished vision run, and its upload with ``--push_to_hub``.

The card (``README.md`` in ``output_dir``) carries the KD facts in its YAML block (``hf_kd:``: teachers, KD weight,
temperature, stop step, selection, divergence, data, steps, GPU-hours, top-1/top-5) and as a table, and shows how
to load the weights with torchvision alone. The upload reuses ``hf_kd.core.hub.push_folder`` (``create_repo`` +
``upload_folder``, no checkpoints or pickles, one-line :class:`~hf_kd.core.hub.HubPushError` on failure); the
token comes from ``--hub_token``/the Hub login and goes to that call only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..core.hub import PAPER, TAGS, HubSettings, cost_note, push_folder, run_card_rows

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
METRIC_KEYS = ("top1", "top5", "eval_loss")


def _kd_sentence(f: dict[str, Any]) -> str:
    if not f["teachers"]:
        return "No teacher: the no-KD baseline, trained through the same loss path."
    stop = f["kd_stop_step"]
    span = "for all" if stop >= f["train_steps"] else f"for the first {stop} of"
    return (f"Knowledge distillation from {', '.join(f'`{t}`' for t in f['teachers'])} (teacher selection "
            f"`{f['kd_teacher_selection']}`) {span} {f['train_steps']} optimizer steps, then plain cross-entropy.")


def _usage(name: str, pushed: bool) -> str:
    """Loading code that needs torchvision and safetensors only (plus huggingface_hub for a Hub repo)."""
    if pushed:
        imports = "from huggingface_hub import hf_hub_download\n"
        read = (f'config = json.load(open(hf_hub_download("{name}", "config.json")))\n'
                f'weights = load_file(hf_hub_download("{name}", "model.safetensors"))\n')
    else:
        imports = ""
        read = (f'folder = "{name}"\nconfig = json.load(open(f"{{folder}}/config.json"))\n'
                'weights = load_file(f"{folder}/model.safetensors")\n')
    return (f"import json\n\nimport torchvision\n{imports}from safetensors.torch import load_file\n\n{read}"
            'model = torchvision.models.get_model(config["architecture"], num_classes=config["num_classes"])\n'
            "model.load_state_dict(weights)\n"
            'model.eval()  # input: config["pretrained_cfg"]["input_size"], normalised with its "mean" and "std"')


def card_text(name: str, f: dict[str, Any], pushed: bool = False) -> str:
    """The human-readable part: what was trained, the KD facts as a table, the results, how to load it."""
    kd = bool(f["teachers"])
    rows = [
        ("architecture", f"`{f['architecture']}` (torchvision), {f['num_classes']} classes"),
        ("teachers", ", ".join(f["teachers"]) or "none"),
        ("KD weight (kd_alpha)", f["kd_alpha"]),
        ("temperature", f["kd_temperature"] if kd else "n/a"),
        ("KD stop step", f["kd_stop_step"] if kd else "n/a"),
        ("teacher selection / divergence", f"{f['kd_teacher_selection']} / {f['kd_divergence']}" if kd else "n/a"),
    ] + run_card_rows(f)
    rows += [(k, f"{f[k]:.4f}") for k in METRIC_KEYS if f.get(k) is not None]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    title = name if pushed else Path(name).name
    return (f"# {title}\n\nAn image classifier trained with hf-kd (knowledge distillation with a KD cutoff, after "
            f"{PAPER}). {_kd_sentence(f)}\n\n## Training\n\n| | |\n|---|---|\n{table}\n\n"
            f"{cost_note(f.get('device'))}; top-1/top-5 are on the "
            "validation split at the last step.\n\n"
            f"## Use\n\n```python\n{_usage(name, pushed)}\n```\n\n"
            "The folder also works as a teacher: `--teacher_checkpoint <folder>`.\n")


def build_card(name: str, facts: dict[str, Any], pushed: bool = False):
    """A ``huggingface_hub.ModelCard``: YAML metadata (tags, ``hf_kd`` facts) + :func:`card_text`."""
    from huggingface_hub import ModelCard, ModelCardData

    tags = [t for t in TAGS if t != "knowledge-distillation" or facts["teachers"]] + ["image-classification",
                                                                                       "torchvision"]
    data = ModelCardData(pipeline_tag="image-classification", tags=tags, hf_kd=facts)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_text(name, facts, pushed)}")


def write_card(folder: str | Path, facts: dict[str, Any], hub: HubSettings) -> str:
    """Write the card into ``folder`` (main process only); returns the name it uses: the Hub repo id when
    pushing (``--hub_model_id``, default the folder's name), else the folder path."""
    folder = Path(folder)
    name = (hub.repo_id or folder.absolute().name) if hub.push else str(folder)
    build_card(name, facts, pushed=hub.push).save(folder / CARD_FILE)
    logger.info("model card written to %s", folder / CARD_FILE)
    return name


def push_run(folder: str | Path, repo_id: str, hub: HubSettings) -> str:
    """Upload the finished run folder (model, config, card, metrics; no checkpoints); returns the commit URL."""
    return push_folder(folder, repo_id, token=hub.token, private=hub.private)
