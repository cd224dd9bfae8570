"""Choosing the teacher cache's default k and log-prob dtype: bytes per KD position vs the sparse loss's error.

    python benchmarks/cache_topk.py --out /tmp/cache_topk        # ~6 min on 1 CPU core

1. trains a tiny BERT teacher (vocab 8192) and a weaker student (fewer steps, another seed) on the C4 sample
   (``$HF_KD_TEST_DATA/c4``, else the built-in corpus) with ``run_mlm_kd.py``;
2. on held-out masked positions (masked exactly as training masks them), compares the sparse KD loss (rest
   bucket and renormalised teacher; log-probs stored as float32/float16/bfloat16) with the dense one at T = 1:
   relative error of the loss and cosine similarity of the gradient with respect to the student's logits; and k
   tokens drawn from the teacher (``missing_mass="sampled"``, one draw: unbiased, so its error is all variance);
3. runs ``hf-kd cache-teacher`` for each k and reports the shard bytes per KD position (format overhead included).

Prints one JSON line per configuration and writes ``results.json``; the table in ``docs/cache.md`` comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KS = (8, 32, 64, 128, 8192)
DTYPES = ("float32", "float16", "bfloat16")


def common_flags(train_file: str | None) -> list[str]:
    data = ["--train_file", train_file] if train_file else []
    return [*data, "--vocab_size", "8192", "--max_seq_length", "64", "--per_device_train_batch_size", "16",
            "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no",
            "--learning_rate", "1e-3", "--warmup_steps", "0", "--max_eval_samples", "64", "--logging_steps", "50"]


def train(out: Path, steps: int, seed: int, flags: list[str]) -> Path:
    from run_scripts.run_mlm_kd import main

    if not (out / "model.safetensors").is_file():
        main([*flags, "--max_steps", str(steps), "--seed", str(seed), "--output_dir", str(out),
              "--overwrite_output_dir"])
    return out


def eval_rows(teacher_dir: Path, student_dir: Path, flags: list[str]):
    """Teacher and student logits at the masked positions of the first validation batches."""
    from transformers import AutoModelForMaskedLM

    from hf_kd.core.cli_utils import parse_args
    from hf_kd.text.config import DistillationTrainingArguments
    from hf_kd.text.pretrain import build_trainer
    from hf_kd.text.script_args import DataArguments, ModelArguments

    m, d, a = parse_args((ModelArguments, DataArguments, DistillationTrainingArguments),
                         [*flags, "--output_dir", "/tmp/unused", "--max_steps", "1"])
    trainer = build_trainer(m, d, a)
    teacher = AutoModelForMaskedLM.from_pretrained(str(teacher_dir)).eval()
    student = AutoModelForMaskedLM.from_pretrained(str(student_dir)).eval()
    t_rows, s_rows = [], []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            mask = batch.pop("labels") != -100
            t_rows.append(teacher(**batch).logits[mask])
            s_rows.append(student(**batch).logits[mask])
    return torch.cat(t_rows), torch.cat(s_rows)


def loss_and_grad(fn, s_logits):
    s = s_logits.clone().requires_grad_(True)
    value = fn(s)
    value.backward()
    return value.detach(), s.grad


def compare(t_logits, s_logits) -> list[dict]:
    from hf_kd.core.cache_format import LOGP_DTYPES
    from hf_kd.core.sparse_kd import SparseTargets, sampled_targets, sparse_kd_sum, topk_targets

    t_logp = F.log_softmax(t_logits.float(), -1)
    dense, dense_grad = loss_and_grad(
        lambda s: F.kl_div(F.log_softmax(s, -1), t_logp, reduction="sum", log_target=True), s_logits)
    out = []
    for k in KS:
        exact = topk_targets(t_logp, k)
        for dtype in DTYPES:
            stored = SparseTargets(exact.ids, exact.logp.to(LOGP_DTYPES[dtype]).float(), exact.log_rest)
            for missing in ("rest", "renormalize"):
                value, grad = loss_and_grad(lambda s, t=stored, mm=missing: sparse_kd_sum(s, t, 1.0, mm), s_logits)
                out.append({"k": k, "logp_dtype": dtype, "missing_mass": missing,
                            "rel_loss_error": float((value - dense) / dense),
                            "grad_cosine": float(F.cosine_similarity(grad.double().flatten(), dense_grad.double().flatten(),
                                                                         dim=0)),
                            "rel_grad_error": float((grad - dense_grad).norm() / dense_grad.norm()),
                            "teacher_rest_mass_mean": float(exact.log_rest.exp().mean())})
        if k < t_logp.shape[-1]:  # k draws from the teacher instead (one draw per position, as a producer stores)
            drawn = sampled_targets(t_logp, k, torch.Generator().manual_seed(0))
            value, grad = loss_and_grad(lambda s, t=drawn: sparse_kd_sum(s, t, 1.0, "sampled"), s_logits)
            out.append({"k": k, "logp_dtype": "float32", "missing_mass": "sampled",
                        "rel_loss_error": float((value - dense) / dense),
                        "grad_cosine": float(F.cosine_similarity(grad.double().flatten(),
                                                                 dense_grad.double().flatten(), dim=0)),
                        "rel_grad_error": float((grad - dense_grad).norm() / dense_grad.norm())})
    return out


def shard_bytes(teacher_dir: Path, flags: list[str], out: Path) -> list[dict]:
    from hf_kd.text.cache_producer import main as produce

    rows = []
    for k in KS:
        for dtype in ("float16", "float32"):
            folder = out / f"cache-k{k}-{dtype}"
            m = produce([*flags, "--max_steps", "8", "--teacher_model_name_or_path", str(teacher_dir), "--top_k",
                         str(k), "--logp_dtype", dtype, "--output_dir", str(folder), "--steps_per_shard", "8",
                         "--seed", "5", "--overwrite_output_dir"]) if not (folder / "manifest.json").is_file() else None
            from hf_kd.core.teacher_cache import TeacherCache

            cache = TeacherCache.open(folder)
            m = cache.manifest
            positions = sum(len(cache.targets(s, 0, 0)) for s in range(m.steps))
            total = sum(e.bytes for e in m.shards)
            rows.append({"k": k, "logp_dtype": dtype, "positions": positions, "bytes": total,
                         "bytes_per_position": total / positions, "producing_seconds": m.producing_seconds,
                         "positions_per_second": positions / m.producing_seconds})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/cache_topk")
    p.add_argument("--teacher_steps", type=int, default=2000)
    p.add_argument("--student_steps", type=int, default=300)
    ns = p.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_KD_CACHE", str(out / "hf_kd_cache"))
    c4 = Path(os.environ.get("HF_KD_TEST_DATA", REPO.parent / "shared" / "data")) / "c4"
    files = sorted(c4.glob("*.jsonl")) if c4.is_dir() else []
    flags = common_flags(str(files[0]) if files else None)
    teacher = train(out / "teacher", ns.teacher_steps, 0, flags)
    student = train(out / "student", ns.student_steps, 1, flags)
    t_logits, s_logits = eval_rows(teacher, student, flags)
    evals = {n: json.loads((out / n / "all_results.json").read_text())["eval_loss"] for n in ("teacher", "student")}
    results = {"data": str(files[0]) if files else "built-in corpus", "rows": int(t_logits.shape[0]), "eval_loss": evals,
               "loss": compare(t_logits, s_logits), "bytes": shard_bytes(teacher, flags, out)}
    for row in results["loss"] + results["bytes"]:
        print(json.dumps(row))
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
