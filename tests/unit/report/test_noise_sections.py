"""The report's noise and curvature sections (sgdtune/report/noise_sections.py) on rows made by
hand: the sharpness section against the edge of stability, with its sentences."""

import pytest

N_TRAIN = 2048


def test_sharpness_is_held_against_2_1_plus_m_under_momentum_not_under_adam_and_weight_decay_is_said():
    from sgdtune.report.noise_sections import sharpness_section

    def row(n, optimizer, lr, k):
        return {"number": n, "batch_size": 4096, "lr": lr, "n_train": 2048, "optimizer": optimizer, "momentum": 0.9,
                "weight_decay": 1e-3, "summary": {"final_sharpness": k, "final_lr_sharpness": lr * k}}

    sh, _ = sharpness_section([row(0, "sgd", 0.1, 30.0), row(1, "adam", 0.01, 500.0)], N_TRAIN)
    assert sh["stability_limit"] == [pytest.approx(3.8), None]
    assert sh["lr_sharpness_to_limit"] == [pytest.approx(3.0 / 3.8), None]  # 3.0 is inside 3.8, not above 2
    assert sh["full_batch"]["number"] == [0] and sh["full_batch"]["edge"] == [pytest.approx(38.0)]
    assert sh["full_batch"]["ratio_to_edge"] == [pytest.approx(30 / 38)]
    assert "Adam" in sh["adam"] and sh["final_sharpness_with_decay"] == [pytest.approx(30.001), pytest.approx(500.001)]
    text = " ".join(summary_sentences_of(sh))
    assert "0.79 times the edge of stability 2(1 + m)/lr" in text and "data loss only" in text


def summary_sentences_of(sharpness: dict) -> list[str]:
    """The report's sentences for a sharpness section alone (one complete trial around it)."""
    from sgdtune.report.summary import summary_sentences

    row = {"number": 0, "batch_size": 4096, "lr": 0.1, "budget": "epochs", "budget_size": 3,
           "summary": {"final_val_acc": 0.9, "final_gen_gap": 0.0}}
    report = {"study": {"trials_by_state": {"COMPLETE": 1}, "objectives": ["val_acc"]}, "sharpness": sharpness,
              "accuracy": {"number": [0], "final_val_acc_se": [None], "final_val_acc_se_source": [None]}}
    return summary_sentences(report, [row])
