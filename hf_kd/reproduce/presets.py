"""The protocol's presets and ``--override KEY=VALUE`` for their fields.

* ``tiny``: CPU, offline, the built-in corpus; teachers trained once and cached (``TinyPreset`` defaults).
* ``gpu-small``: one GPU (H100/A100, bf16), BERT-small students (4 layers, 512 hidden) on C4 streamed from the
  Hub, the recycled BERT-medium of Turc et al. 2019 (``google/bert_uncased_L-8_H-512_A-8``, same WordPiece
  vocabulary) as teacher, a 0.75x/1.5x/2x budget frontier, 2 seeds. Sized for about an hour on one H100 (the run
  measures its own step costs on the GPU and prints its plan and time estimate before training).
* ``tiny`` for ``--task clm``: the tiny preset's protocol for a GPT-2 of the same size (2 layers, 128 hidden) on
  the built-in corpus, quality = held-out next-token loss; sized for ~10 min on 2 CPU cores (``CLM_TINY``).
"""

from __future__ import annotations

from dataclasses import fields, replace

from ..core.errors import UserError
from .text import TinyPreset

GPU_SMALL = TinyPreset(
    model_preset="small", vocab_size=30522, max_seq_length=128, batch_size=128, steps=3000, learning_rate=1e-3,
    warmup_ratio=0.06, eval_every=300, kd_alpha=0.5, kd_temperature=1.0, frontier=(0.75, 1.5, 2.0),
    dataset_name="allenai/c4", dataset_config_name="en", streaming=True, tokenizer_name="bert-base-uncased",
    max_eval_samples=2048, recycled_teacher="google/bert_uncased_L-8_H-512_A-8", bf16=True)
PRESETS = {"tiny": TinyPreset(), "gpu-small": GPU_SMALL}
# A causal-LM step scores every position over the whole vocabulary (an MLM step: the 15 % masked ones), so it
# costs several MLM steps: fewer steps fit the same wall-clock (see the README for the measured step time).
CLM_TINY = replace(TinyPreset(), task="clm", steps=120, eval_every=12, good_teacher_steps=360,
                   second_teacher_steps=240, poor_teacher_steps=30)
CLM_PRESETS = {"tiny": CLM_TINY}
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


def apply_overrides(p: TinyPreset, pairs: list[str] | None) -> TinyPreset:
    """``KEY=VALUE`` pairs replace preset fields (e.g. a tiny CPU rehearsal of gpu-small); unknown keys are errors."""
    types = {f.name: str(f.type) for f in fields(p)}
    changes = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise UserError(f"--override {pair!r} is invalid: expected KEY=VALUE with KEY one of {', '.join(types)}")
        changes[key] = _parse(value, types[key], key)
    return replace(p, **changes)


def scale_steps(p: TinyPreset, steps: int) -> TinyPreset:
    """The students' budget set to ``steps``; evaluation interval and trained teachers scale with it."""
    k = steps / p.steps
    return replace(p, steps=steps, eval_every=max(1, int(p.eval_every * k)),
                   good_teacher_steps=max(1, int(p.good_teacher_steps * k)),
                   second_teacher_steps=max(1, int(p.second_teacher_steps * k)),
                   poor_teacher_steps=max(1, int(p.poor_teacher_steps * k)))
