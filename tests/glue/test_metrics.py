"""GLUE metrics against hand-computed answers, the BERT-convention GLUE average, the hyperparameter table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glue_eval.metrics import AVERAGED_TASKS, glue_average, split_metrics, task_metrics, task_score
from glue_eval.tasks import HPARAMS, resolve_tasks, task_hparams


def test_matthews_hand_computed():
    # TP=1 TN=2 FP=0 FN=1: (1*2 - 0*1) / sqrt(1*2*2*3)
    m = split_metrics("cola", np.array([[0, 1], [1, 0], [1, 0], [1, 0]]), np.array([1, 1, 0, 0]))
    assert m == {"matthews_correlation": pytest.approx(2 / math.sqrt(12))}
    assert split_metrics("cola", np.zeros((4, 2)), np.array([1, 1, 0, 0]))["matthews_correlation"] == 0.0


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_and_accuracy_hand_computed(task):
    # TP=2 FP=1 FN=1 TN=1 -> P = R = F1 = 2/3, accuracy 3/5
    m = split_metrics(task, np.array([1, 1, 0, 1, 0]), np.array([1, 1, 1, 0, 0]))
    assert m == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "wnli"])
def test_accuracy_from_logits(task):
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])  # argmax 0 1 0 1
    assert split_metrics(task, logits, np.array([0, 1, 1, 1])) == {"accuracy": 0.75}


def test_stsb_pearson_spearman_hand_computed():
    preds = np.array([[1.0], [2.0], [3.0], [4.0]])  # [N, 1] regression head output
    m = split_metrics("stsb", preds, np.array([1.0, 4.0, 9.0, 16.0]))
    assert m["spearmanr"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(25 / math.sqrt(5 * 129))  # sum dxdy / sqrt(sum dx^2 sum dy^2)
    assert split_metrics("stsb", np.ones(4), np.arange(4.0)) == {"pearson": 0.0, "spearmanr": 0.0}


def test_mnli_matched_and_mismatched():
    three = np.eye(3)
    out = task_metrics("mnli", {"validation_matched": (three, np.array([0, 1, 2])),
                                "validation_mismatched": (three, np.array([0, 0, 0]))})
    assert out == {"accuracy_matched": 1.0, "accuracy_mismatched": pytest.approx(1 / 3)}
    assert task_score("mnli", out) == pytest.approx(100 * (1 + 1 / 3) / 2)


def test_glue_average_reproduces_bert_paper_table1():
    def scores(mnli_m, mnli_mm, qqp, qnli, sst2, cola, stsb, mrpc, rte):
        return {"mnli": {"accuracy_matched": mnli_m / 100, "accuracy_mismatched": mnli_mm / 100},
                "qqp": {"f1": qqp / 100, "accuracy": 0.0}, "qnli": {"accuracy": qnli / 100},
                "sst2": {"accuracy": sst2 / 100}, "cola": {"matthews_correlation": cola / 100},
                "stsb": {"spearmanr": stsb / 100, "pearson": 0.0}, "mrpc": {"f1": mrpc / 100, "accuracy": 0.0},
                "rte": {"accuracy": rte / 100}, "wnli": {"accuracy": 0.0}}  # WNLI must not count

    base = glue_average(scores(84.6, 83.4, 71.2, 90.5, 93.5, 52.1, 85.8, 88.9, 66.4))
    large = glue_average(scores(86.7, 85.9, 72.1, 92.7, 94.9, 60.5, 86.5, 89.3, 70.1))
    assert round(base.value, 1) == 79.6 and round(large.value, 1) == 82.1  # BERT paper, Table 1 "Average"
    assert base.complete and "WNLI excluded" in base.label and base.tasks == list(AVERAGED_TASKS)


def test_glue_average_over_subset_says_so():
    avg = glue_average({"rte": {"accuracy": 0.6}, "mrpc": {"f1": 0.8, "accuracy": 0.7}, "wnli": {"accuracy": 1.0}})
    assert avg.value == pytest.approx(70.0)
    assert avg.tasks == ["mrpc", "rte"] and not avg.complete and "cola" in avg.missing
    assert "2/8 tasks" in avg.label and "mrpc,rte" in avg.label
    assert glue_average({"wnli": {"accuracy": 1.0}}).value is None


def test_resolve_tasks_and_errors():
    assert resolve_tasks("all") == list(HPARAMS)
    assert resolve_tasks("RTE, sst-2,mrpc") == ["sst2", "mrpc", "rte"]
    with pytest.raises(ValueError, match="unknown GLUE task 'foo'.*expected 'all' or some of cola"):
        resolve_tasks("rte,foo")


def test_hparam_table_and_overrides():
    assert task_hparams("rte").learning_rate == HPARAMS["rte"].learning_rate
    hp = task_hparams("rte", {"learning_rate": 5e-5, "max_seq_length": None}, "rte.num_train_epochs=10,cola.learning_rate=1")
    assert (hp.learning_rate, hp.num_train_epochs, hp.max_seq_length) == (5e-5, 10.0, 128)
    assert task_hparams("rte", per_task="rte.per_device_train_batch_size=16").per_device_train_batch_size == 16
    with pytest.raises(ValueError, match="rte.nonsense=1"):
        task_hparams("rte", per_task="rte.nonsense=1")
    with pytest.raises(ValueError, match="not a valid float"):
        task_hparams("rte", per_task="rte.learning_rate=fast")
