"""Helpers for tests that run the scripts in-process: a synthetic corpus, tiny saved teachers, the runner."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.support import REPO

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fu", "gi", "ho", "ju", "pe", "zo")


def synthetic_corpus(n_lines: int = 300, seed: int = 0) -> str:
    """Deterministic prose-like text (a few hundred made-up words): fast to tokenize, no download."""
    rng = random.Random(seed)
    words = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(400)})
    lines = (" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "." for _ in range(n_lines))
    return "\n".join(lines) + "\n"


@dataclass
class KDEnv:
    inputs: Path  # read-only inputs: corpus, teachers, broken files
    cache: Path  # HF_KD_CACHE (tokenizer cache)
    train: Path
    vocab_size: int  # of the tokenizer the script trains on `train` with --vocab_size 512
    tokenizer: Path  # that tokenizer's folder (in the cache)


def build_env(root: Path) -> KDEnv:
    from hf_kd.text.data import load_raw_splits, text_sample, train_wordpiece_tokenizer
    from hf_kd.text.script_args import DataArguments

    inputs, cache = root / "inputs", root / "cache"
    inputs.mkdir(parents=True)
    train = inputs / "train.txt"
    train.write_text(synthetic_corpus())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_KD_CACHE", str(cache))
        raw, _ = load_raw_splits(DataArguments(train_file=str(train)))
        tok = train_wordpiece_tokenizer(text_sample(raw, "text"), 512)  # cached: the script reuses it
    return KDEnv(inputs, cache, train, len(tok), Path(tok.name_or_path))


def tiny_model(path: Path, vocab_size: int, cls_name: str = "BertForMaskedLM", seed: int = 0,
               max_pos: int = 64) -> Path:
    """A 1-layer, 32-wide BERT of class ``cls_name`` saved with save_pretrained (safetensors)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=max_pos)
    getattr(transformers, cls_name)(cfg).save_pretrained(str(path))
    return path


def truncate(path: Path, n_bytes: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:-n_bytes])


def script_args(env: KDEnv, out: Path, *extra: str, max_steps: int = 2) -> list[str]:
    """A tiny run_mlm_kd.py command line (CPU, seq 32, 16 samples, no checkpoints unless ``extra`` asks)."""
    return ["--train_file", str(env.train), "--vocab_size", "512", "--max_seq_length", "32",
            "--max_train_samples", "16", "--max_eval_samples", "4", "--per_device_train_batch_size", "4",
            "--max_steps", str(max_steps), "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
            "--save_strategy", "no", "--output_dir", str(out), *extra]


def run_script(argv: list[str], capsys, script: str = "mlm") -> tuple[int, str]:
    """``run_mlm_kd.py argv`` (``script="clm"``: ``run_clm_kd.py``) in-process as the console would run it:
    (exit status, stderr)."""
    from hf_kd.core.cli_utils import run_cli
    from run_scripts import run_clm_kd, run_mlm_kd

    main = {"mlm": run_mlm_kd.main, "clm": run_clm_kd.main}[script]
    capsys.readouterr()
    rc = run_cli(lambda: main(argv))
    return rc, capsys.readouterr().err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` -> hash of its bytes (and every folder), to prove nothing changed."""
    snap = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            snap[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return snap


def step_of(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.split("-")[-1])


def attempt(env, argv: list[str], out: Path, resumed_at: int, rng: random.Random | None, interval: float | None,
            log: Path, script: str = "run_mlm_kd.py") -> tuple[bool, float, float | None]:
    """One ``run_mlm_kd.py`` process, SIGKILLed a random moment after it published a checkpoint past ``resumed_at``
    (never killed when ``rng`` is None).

    Returns (killed, wall seconds, seconds between two checkpoints); ``interval`` (that measure from an earlier
    attempt) scales the random delay, so the kill lands anywhere in a save interval, saves included.
    """
    from hf_kd.core.checkpointing import latest_complete_checkpoint

    penv = {**os.environ, "HF_KD_CACHE": str(env.cache), "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same threads as the in-process reference run
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(REPO / "run_scripts" / script), *argv], env=penv,
                                stdout=f, stderr=subprocess.STDOUT)
    seen: dict[int, float] = {}
    try:
        while proc.poll() is None and time.monotonic() - start < 180:
            last = latest_complete_checkpoint(out)
            if last and step_of(last) > resumed_at:
                seen.setdefault(step_of(last), time.monotonic())
            if interval is None and len(seen) >= 2:
                a, b = sorted(seen)[:2]
                interval = seen[b] - seen[a]
            if rng is not None and interval is not None and seen:
                time.sleep(rng.uniform(0.0, 1.5) * interval)
                proc.kill()
                proc.wait()
                return True, time.monotonic() - start, interval
            time.sleep(0.02)
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    return False, time.monotonic() - start, interval
