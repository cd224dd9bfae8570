"""Teacher loading, checking, placement and release -- one place for the text trainer and the vision loop.

Safety: weights load from safetensors. Pickle files (``.bin``, ``.pt``, ``.pth``) can execute code when
unpickled, so they are refused unless the caller opts in (``allow_pickle=True``), and even then go through
``torch.load(weights_only=True)``. ``trust_remote_code`` is off unless the user turns it on.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class ModelLoadError(ValueError):
    """A model (student or teacher) or a weights file cannot be loaded; the message names the path and what is
    expected."""


class TeacherLoadError(ModelLoadError):
    """A teacher cannot be loaded, or does not fit the student (task, vocabulary, classes)."""


def load_error(what: str) -> type[ModelLoadError]:
    """The error type for a model loaded as ``what`` (``"teacher"``, ``"student"``, ``"model"``)."""
    return TeacherLoadError if what == "teacher" else ModelLoadError


def load_state_dict_file(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` (always) or a pickle file (only with ``allow_pickle``)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {str(p)!r} does not exist; expected a .safetensors file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # safetensors raises its own error types for truncated headers/data
            raise ModelLoadError(
                f"weights file {str(p)!r} is not a readable safetensors file ({e}); it may be truncated or corrupted"
            ) from e
    if p.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelLoadError(
                f"refusing to unpickle {str(p)!r}: pickle files can run code; convert it to .safetensors or pass "
                "--allow_pickle_weights to load it with torch.load(weights_only=True)"
            )
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"could not load {str(p)!r} with torch.load(weights_only=True): {e}") from e
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise ModelLoadError(f"{str(p)!r} holds a {type(obj).__name__}, expected a state dict")
        return obj
    raise ModelLoadError(f"weights file {str(p)!r} has an unknown suffix; expected .safetensors (or {PICKLE_SUFFIXES})")


def check_local_model_dir(path: Path, allow_pickle: bool) -> None:
    """A local model folder must hold a config and safetensors weights (or pickle weights when allowed)."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {str(path)!r} has no config.json; expected a save_pretrained() folder")
    safetensors = list(path.glob("*.safetensors"))
    pickles = [f for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES and f.name != "training_args.bin"]
    if not safetensors and pickles and not allow_pickle:
        raise ModelLoadError(
            f"model folder {str(path)!r} has only pickle weights ({pickles[0].name}); refusing to unpickle them. "
            "Convert to safetensors or pass --allow_pickle_weights"
        )
    for f in safetensors:
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt") as sf:
                sf.keys()
        except Exception as e:
            raise ModelLoadError(f"{str(f)!r} is not a readable safetensors file ({e}); truncated or corrupted?") from e


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` can only mean a local folder: ``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``, a backslash,
    or ``a/b`` whose first part ``a`` is a local folder (``runs/nope`` next to ``runs/``). A Hub id is ``name``
    or ``org/name`` with no such ``org`` folder here."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (``1``/``true``/``yes``/``on``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def in_hub_cache(repo_id: str) -> bool:
    """Whether a Hub model ``repo_id`` has been downloaded before (so it loads offline)."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}").is_dir()


def check_model_reference(name: str, what: str = "teacher") -> None:
    """A path-like ``name`` that does not exist is an error now, before any Hub call (which would time out);
    so is a Hub id that only the Hub could answer while it is switched off (``HF_HUB_OFFLINE``)."""
    if Path(name).expanduser().exists():
        return
    if looks_like_local_path(name):
        raise load_error(what)(f"{what} {name!r} does not exist: no local folder of that name; expected a local "
                               "model folder or a Hub id (org/name)")
    if hub_offline() and not in_hub_cache(name):
        raise load_error(what)(f"{what} {name!r}: no local folder of that name exists, and the Hub is offline "
                               "(HF_HUB_OFFLINE is set) with no cached copy of it; expected a local model folder, "
                               "or a Hub id downloaded before")


def load_pretrained(name_or_path: str, auto_class: type, dtype: torch.dtype | None = None,
                    trust_remote_code: bool = False, allow_pickle: bool = False, what: str = "teacher"
                    ) -> PreTrainedModel:
    """``auto_class.from_pretrained`` with the safety checks above; Hub ids keep the real Hub path."""
    p = Path(name_or_path)
    if p.exists():
        if not p.is_dir():
            raise load_error(what)(f"{what} {name_or_path!r} is a file; expected a model folder or a Hub id")
        check_local_model_dir(p, allow_pickle)
    else:
        check_model_reference(name_or_path, what)
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    try:
        model, info = auto_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except OSError as e:
        reason = str(e).splitlines()[0]
        if "connect" in reason.lower() or "offline" in reason.lower():  # the Hub was the only place left to look
            reason = f"no local folder of that name exists and the Hub was not reachable ({reason})"
        raise load_error(what)(f"could not load {what} {name_or_path!r}: {reason}") from e
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        flag = "--teacher_trust_remote_code" if what == "teacher" else "--trust_remote_code"
        raise load_error(what)(f"{what} {name_or_path!r} needs to run its own model code, which is off; expected a "
                               f"model transformers knows, or pass {flag} if you trust that code") from e
    except pickle.UnpicklingError as e:  # only reachable with allow_pickle: weights_only=True refused an object
        raise load_error(what)(
            f"{what} {name_or_path!r}: torch.load(weights_only=True) refused its pickle weights (they hold objects "
            "other than tensors, which could run code); expected plain tensors, ideally as .safetensors"
        ) from e
    missing = sorted(info.get("missing_keys") or ())
    if what == "teacher" and missing:
        # e.g. a saved BertModel or classifier loaded as *ForMaskedLM: the head would be random, and KD from
        # a random head silently teaches noise. (A student may start from a bare encoder; a teacher may not.)
        archs = getattr(model.config, "architectures", None) or ["unknown"]
        raise load_error(what)(
            f"teacher {name_or_path!r} has no weights for {len(missing)} parameter(s) of {auto_class.__name__} "
            f"(e.g. {missing[0]}; its architecture is {archs[0]}); expected a complete checkpoint with that head"
        )
    return model


def freeze_teacher(teacher: torch.nn.Module, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Eval mode, no gradients, on ``device``: a teacher is never trained and never in the optimizer."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if device is not None or dtype is not None:
        teacher.to(device=device, dtype=dtype)
    return teacher


def release_teachers(teachers: Sequence[torch.nn.Module]) -> None:
    """Free the teachers' accelerator memory after the KD stop step (they are never called again)."""
    on_accel = any(p.device.type != "cpu" for t in teachers for p in t.parameters())
    for t in teachers:
        t.to("cpu")
    gc.collect()
    if on_accel and torch.cuda.is_available():
        torch.cuda.empty_cache()
    logger.info("KD stopped: %d teacher(s) released from the accelerator", len(teachers))


def output_vocab_size(model: torch.nn.Module) -> int | None:
    """Size of a model's output distribution (vocabulary for MLM heads, classes for classifiers)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "vocab_size", None):
        return int(cfg.vocab_size)
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and hasattr(emb, "out_features"):
        return int(emb.out_features)
    fc = getattr(model, "fc", None)
    if isinstance(fc, torch.nn.Linear):
        return int(fc.out_features)
    return None


def check_teacher_vocab(student: torch.nn.Module, teachers: Sequence[torch.nn.Module], names: Sequence[str]) -> None:
    """Every teacher must predict over the student's vocabulary (or classes); else KD compares nonsense."""
    s = output_vocab_size(student)
    for t, name in zip(teachers, names):
        v = output_vocab_size(t)
        if s is not None and v is not None and v != s:
            raise TeacherLoadError(
                f"teacher {name!r} has vocabulary/output size {v} but the student has {s}; they must be equal"
            )


# -- vocabulary content: the same size is not the same vocabulary ---------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")
SPECIAL_TOKEN_IDS = ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id", "bos_token_id",
                     "eos_token_id")


def tokenizer_source(teacher: torch.nn.Module | str) -> str | None:
    """Where a teacher's tokenizer can be read: its path or Hub id, or the local folder a module was loaded from."""
    if isinstance(teacher, str):
        return teacher
    name = getattr(getattr(teacher, "config", None), "_name_or_path", "") or ""
    return name if name and Path(name).is_dir() else None


def load_tokenizer_of(source: str | None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model (folder or Hub id), or ``None`` when it has none."""
    if source is None:
        return None
    p = Path(source)
    if p.is_dir() and not any((p / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        logger.debug("no tokenizer could be loaded from %r: %s", source, e)
        return None


def vocabulary_difference(student_vocab: dict[str, int], teacher_vocab: dict[str, int],
                          student_special: dict[str, int | None] | None = None,
                          teacher_special: dict[str, int | None] | None = None) -> str | None:
    """``None`` when token->id maps and special-token ids agree; else one line naming the first differences."""
    student_special, teacher_special = student_special or {}, teacher_special or {}
    for key in sorted(set(student_special) | set(teacher_special)):
        if student_special.get(key) != teacher_special.get(key):
            return f"{key} is {teacher_special.get(key)} in the teacher but {student_special.get(key)} in the student"
    if student_vocab == teacher_vocab:
        return None
    s_by_id = {i: tok for tok, i in student_vocab.items()}
    t_by_id = {i: tok for tok, i in teacher_vocab.items()}
    ids = sorted(set(s_by_id) | set(t_by_id))
    differing = [i for i in ids if s_by_id.get(i) != t_by_id.get(i)]
    first = ", ".join(f"id {i} is {t_by_id.get(i)!r} for the teacher but {s_by_id.get(i)!r} for the student"
                      for i in differing[:3])
    return f"{len(differing)} of {len(ids)} token ids differ ({first})"


def _vocab_and_specials(tokenizer) -> tuple[dict[str, int], dict[str, int | None]]:
    return tokenizer.get_vocab(), {k: getattr(tokenizer, k, None) for k in SPECIAL_TOKEN_IDS}


def check_teacher_tokenizers(student_tokenizer, sources: Sequence[str | None], names: Sequence[str],
                             trust_remote_code: bool = False) -> None:
    """Refuse a teacher whose saved tokenizer maps tokens to other ids than the student's; warn if not comparable.

    ``student_tokenizer``: the trainer's ``processing_class`` (or ``None``); ``sources``: where each teacher's
    tokenizer lives (:func:`tokenizer_source`), ``None`` when it has none.
    """
    if student_tokenizer is not None and not hasattr(student_tokenizer, "get_vocab"):
        student_tokenizer = getattr(student_tokenizer, "tokenizer", None)  # a processor wrapping a tokenizer
    uncompared, in_memory = [], []
    for source, name in zip(sources, names):
        if source is None:  # a model object built by the caller: there is no saved tokenizer to read
            in_memory.append(name)
            continue
        teacher_tokenizer = load_tokenizer_of(source, trust_remote_code)
        if student_tokenizer is None or teacher_tokenizer is None:
            uncompared.append(name)
            continue
        (s_vocab, s_special), (t_vocab, t_special) = map(_vocab_and_specials, (student_tokenizer, teacher_tokenizer))
        diff = vocabulary_difference(s_vocab, t_vocab, s_special, t_special)
        if diff:
            raise TeacherLoadError(f"teacher {name!r} uses another vocabulary than the student: {diff}; expected the "
                                   "teacher's own tokenizer for the student (omit --tokenizer_name to use it)")
    if in_memory:
        # Not a warning: a script that builds its teacher in memory (examples/distill_mlm.py) chose its tokenizer
        # itself, and the output sizes were checked; a teacher *folder* without a tokenizer still warns below.
        logger.info("token ids of teacher(s) %s not compared: passed as model objects, with no saved tokenizer; "
                    "only output sizes were checked", in_memory)
    if uncompared:
        side = ("the student has no tokenizer (processing_class)" if student_tokenizer is None
                else f"no tokenizer was found for teacher(s) {uncompared}")
        logger.warning("vocabularies not compared: %s; only output sizes were checked, and KD assumes the teacher and "
                       "the student give every token the same id", side)
