"""The calibration behind ``hf-kd reproduce``'s calibrated cost axis, standalone: seconds per optimizer step of each
step kind, timed interleaved in one process with the ``DistillationTrainer``'s own loss.

    python benchmarks/reproduce_step_costs.py                        # tiny preset, built-in corpus, 1 thread
    python benchmarks/reproduce_step_costs.py --preset gpu-small --override streaming=false   # on a GPU

Kinds: ``base`` (no-KD step), ``kd1``/``kd3`` (KD step with 1 / 3 teachers of the real teachers' size), ``post`` (a KD
run's step after its cutoff). ``hf-kd reproduce`` measures the same once per output folder (``calibration.json``)
and charges every run ``steps x cost of its step kind``, so runs made minutes apart on a loaded machine are
compared on one measurement.
"""

from __future__ import annotations

import argparse
import json

import torch

from hf_kd.reproduce.presets import PRESETS, apply_overrides
from hf_kd.reproduce.text import TextBackend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS["mlm"]))
    ap.add_argument("--override", nargs="*", default=[], help="KEY=VALUE preset fields, as for hf-kd reproduce")
    ap.add_argument("--corpus", default=None, help="local .txt/.jsonl instead of the preset's corpus")
    ap.add_argument("--kinds", nargs="+", default=["base", "kd1", "kd3", "post"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps_per_round", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    p = apply_overrides(PRESETS["mlm"][a.preset], a.override)
    cal = TextBackend(p, a.corpus).measure_step_costs(a.kinds, a.rounds, a.steps_per_round)
    print(json.dumps(cal.to_dict(), indent=2))


if __name__ == "__main__":
    main()
