"""Student construction: from a checkpoint, a config, or a size preset (from scratch).

Presets: BERT sizes for masked LMs; for causal LMs the same sizes as GPT-2 (``tiny``...) or Llama (``llama-tiny``...).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, BertConfig, GPT2Config, LlamaConfig

from ..core.teachers import ModelLoadError, load_pretrained, load_tokenizer_of
from .script_args import CLM_PRESETS, MODEL_PRESETS, ModelArguments

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# (layers, hidden, heads): the BERT miniatures of Turc et al. 2019 plus BERT-base; FFN = 4 x hidden.
PRESET_SHAPES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
                 "base": (12, 768, 12)}


def preset_config(name: str, vocab_size: int, max_position_embeddings: int = 512, **overrides) -> BertConfig:
    """A ``BertConfig`` for one of :data:`MODEL_PRESETS`."""
    if name not in PRESET_SHAPES:
        raise ValueError(f"model_preset={name!r} is invalid: expected one of {MODEL_PRESETS}")
    layers, hidden, heads = PRESET_SHAPES[name]
    cfg = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               intermediate_size=4 * hidden, max_position_embeddings=max_position_embeddings)
    cfg.update(overrides)
    return BertConfig(**cfg)


def special_token_ids(tokenizer, vocab_size: int) -> dict[str, int | None]:
    """bos/eos/pad ids for a from-scratch causal-LM config, always inside the vocabulary or ``None``.

    Left unset, ``GPT2Config`` keeps GPT-2's 50256 (and ``LlamaConfig`` 1/2): outside a trained 8k vocabulary,
    warned about at every load and saved in ``config.json``/``generation_config.json``. A WordPiece tokenizer has
    no bos/eos tokens; its ``[CLS]``/``[SEP]`` play those parts.
    """
    def first(*names):
        values = (getattr(tokenizer, n, None) for n in names)
        return next((v for v in values if isinstance(v, int) and 0 <= v < vocab_size), None)

    return {"bos_token_id": first("bos_token_id", "cls_token_id"), "eos_token_id": first("eos_token_id", "sep_token_id"),
            "pad_token_id": first("pad_token_id")}


def clm_preset_config(name: str, vocab_size: int, max_position_embeddings: int = 1024, tokenizer=None):
    """A ``GPT2Config`` (``tiny``...) or ``LlamaConfig`` (``llama-tiny``...) for one of :data:`CLM_PRESETS`."""
    if name not in CLM_PRESETS:
        raise ValueError(f"model_preset={name!r} is invalid for a causal LM: expected one of {CLM_PRESETS}")
    layers, hidden, heads = PRESET_SHAPES[name.removeprefix("llama-")]
    ids = special_token_ids(tokenizer, vocab_size)
    if name.startswith("llama-"):
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, intermediate_size=8 * hidden // 3,
                           max_position_embeddings=max_position_embeddings, tie_word_embeddings=True, **ids)
    return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                      n_positions=max_position_embeddings, **ids)


def build_student(args: ModelArguments, tokenizer: PreTrainedTokenizerBase, allow_pickle: bool = False,
                  task: str = "mlm") -> PreTrainedModel:
    """The student model: ``model_name_or_path`` > ``config_name`` > ``model_preset`` (default ``tiny``).

    ``task``: ``"mlm"`` (``AutoModelForMaskedLM``, BERT presets) or ``"clm"`` (``AutoModelForCausalLM``, GPT-2 and
    Llama presets).
    """
    auto_class = AutoModelForCausalLM if task == "clm" else AutoModelForMaskedLM
    if args.model_name_or_path:
        # float32 whatever the checkpoint was saved in (transformers 5.x would keep a bf16 save in bf16): these are
        # the trained master weights; --bf16/--fp16 run them under autocast.
        return declare_tied_keys(load_pretrained(args.model_name_or_path, auto_class, dtype=torch.float32,
                               trust_remote_code=args.trust_remote_code, allow_pickle=allow_pickle, what="student"))
    if args.config_name:
        try:
            config = AutoConfig.from_pretrained(args.config_name, trust_remote_code=args.trust_remote_code)
        except OSError as e:
            raise ModelLoadError(f"could not load config {args.config_name!r}: {str(e).splitlines()[0]}") from e
        if task != "clm" or config.vocab_size < len(tokenizer):
            # causal-LM configs (Llama, Qwen) pad the vocabulary past the tokenizer: keep it, so that a teacher
            # of the same family has the very same output size
            config.vocab_size = len(tokenizer)
    elif task == "clm":
        config = clm_preset_config(args.model_preset or "tiny", vocab_size=len(tokenizer), tokenizer=tokenizer)
    else:
        config = preset_config(args.model_preset or "tiny", vocab_size=len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id
    return declare_tied_keys(auto_class.from_config(config, trust_remote_code=args.trust_remote_code))


def declare_tied_keys(model: PreTrainedModel) -> PreTrainedModel:
    """Mark the tied output weights (BERT's ``cls.predictions.decoder.*``, GPT-2's ``lm_head.weight``) as not saved.

    They are not: a tied weight is written once, under its source's name. On ``--resume_from_checkpoint`` the
    Trainer loads the checkpoint non-strictly and warns about "missing keys" unless they are exactly
    ``_keys_to_ignore_on_save`` -- then it re-ties them instead. The weights were loaded either way (the
    tied parameter *is* its source); this makes the normal resume path quiet and explicit about why.
    """
    tied = set(getattr(model, "all_tied_weights_keys", None) or ())
    if tied and not model._keys_to_ignore_on_save:
        model._keys_to_ignore_on_save = tied
    return model


def check_vocab_fits(model, tokenizer) -> None:
    """Token ids beyond the embedding table fail deep inside the model (a device-side assert on GPU)."""
    size = getattr(model.config, "vocab_size", None)
    if size is not None and len(tokenizer) > size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {size}; expected a "
                         "tokenizer of at most that size (pass the model's own tokenizer with --tokenizer_name)")


def check_seq_length(model, max_seq_length: int) -> None:
    """Sequences longer than the position embeddings would index out of range deep inside the model."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_seq_length > limit:
        raise ValueError(f"max_seq_length={max_seq_length} is larger than the model's max_position_embeddings={limit}; "
                         f"expected at most {limit}")


def check_teacher_positions(teachers, max_seq_length: int, trust_remote_code: bool = False) -> None:
    """Every teacher (a model, or a folder / Hub id whose config is read without loading weights) takes sequences
    of ``max_seq_length`` tokens: a shorter one would index past its position table inside its first forward."""
    for teacher in teachers or ():
        if isinstance(teacher, str):
            try:
                config = AutoConfig.from_pretrained(teacher, trust_remote_code=trust_remote_code)
            except (OSError, ValueError):
                continue  # not readable here: loading the teacher reports that, with its own message
            name = teacher
        else:
            config, name = getattr(teacher, "config", None), type(teacher).__name__
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_seq_length > limit:
            raise ValueError(f"teacher {name!r} takes at most {limit} positions (max_position_embeddings) but the "
                             f"sequences have {max_seq_length} tokens (--block_size / --max_seq_length); expected a "
                             f"sequence length of at most {limit}, or a teacher with more positions")


def teacher_tokenizer_for_student(args: ModelArguments, teachers: Sequence[str] | None, trust_remote_code: bool = False
                                  ) -> PreTrainedTokenizerBase | None:
    """With a teacher and neither ``--tokenizer_name`` nor ``--model_name_or_path``: the first teacher's tokenizer.

    KD compares distributions id by id, so a student with a tokenizer of its own (e.g. trained here on other
    text, same size) would be taught across mismatched ids. ``None`` when another source applies.
    """
    if args.tokenizer_name or args.model_name_or_path or not teachers:
        return None
    tokenizer = load_tokenizer_of(teachers[0], trust_remote_code)
    if tokenizer is None:
        logger.warning("teacher %r has no tokenizer to share: the student gets a tokenizer of its own", teachers[0])
    else:
        logger.info("no --tokenizer_name: the student uses the tokenizer of teacher %r (KD needs the same token ids)",
                    teachers[0])
    return tokenizer
