"""The optimiser recipe a ``--model_preset`` brings: a learning rate and warm-up that train a model of that size
from scratch.

transformers' default learning rate (5e-5) is a *fine-tuning* rate: a from-scratch tiny BERT at 5e-5 barely
moves in 300 steps (eval loss 7.99), where 2e-3 (``examples/distill_mlm.py``, ``hf-kd reproduce``) gets it to
6.4 in 60. The recipe applies only to what the user did not set: an explicit ``--learning_rate`` or
``--warmup_steps`` (command line or ``--config`` file) always wins, so "explicit" is read from the flags given,
not from the parsed value (``HfArgumentParser`` fills defaults that look the same as a typed 5e-5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .script_args import ModelArguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresetRecipe:
    learning_rate: float
    warmup_steps: float  # < 1: a share of max_steps, as TrainingArguments reads it


# By width: the tiny rate is the one the repository's measured runs use (reproduce, examples); larger presets
# take the usual smaller from-scratch rates (reproduce's gpu-small: BERT-small at 1e-3; README's BERT-base: 5e-4).
RECIPES = {"tiny": PresetRecipe(2e-3, 0.06), "mini": PresetRecipe(1e-3, 0.06), "small": PresetRecipe(1e-3, 0.06),
           "medium": PresetRecipe(5e-4, 0.06), "base": PresetRecipe(5e-4, 0.06)}


def preset_of(model_args: ModelArguments) -> str | None:
    """The preset the student is built from (``tiny`` when nothing else is set), or ``None`` (checkpoint/config)."""
    if model_args.model_name_or_path or model_args.config_name:
        return None
    return model_args.model_preset or "tiny"


def apply_preset_recipe(model_args: ModelArguments, training_args, given: set[str]) -> dict[str, float]:
    """Set the preset's learning rate / warm-up on ``training_args`` where no flag in ``given`` set them.

    Returns what was applied (empty for a student from a checkpoint or config, which keeps the Trainer's
    defaults: a pretrained model is fine-tuned, not trained from scratch).
    """
    preset = preset_of(model_args)
    if preset is None:
        return {}
    recipe = RECIPES[preset.removeprefix("llama-")]
    applied = {}
    for name in ("learning_rate", "warmup_steps"):
        if name not in given:
            applied[name] = getattr(recipe, name)
            setattr(training_args, name, applied[name])
    if applied:
        logger.info("model_preset %s: %s (set the flags to override)", preset,
                    ", ".join(f"{k} {v:g}" for k, v in applied.items()))
    return applied
