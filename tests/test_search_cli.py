"""``ascan search``: user errors are one line with exit 2, and a previous search is never overwritten silently."""

from __future__ import annotations

import pytest

from ascan.cli import main
from ascan.errors import EXIT_USER_ERROR


@pytest.mark.parametrize("argv, message", [
    (["--budget-ms", "-1"], "--budget-ms"),
    (["--budget-ms", "50", "--trials", "0"], "--trials"),
    (["--budget-ms", "50", "--depths", "1-2,1-4"], "--depths"),
    (["--budget-ms", "50", "--letters", "C,CQ,CT,CT"], "--letters"),
    (["--budget-ms", "50", "--reference", "CQ-C"], "--reference"),
    (["--budget-ms", "50", "--proxy-train", "1"], "train_subset"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, message) -> None:
    assert main(["search", "--output", str(tmp_path / "s"), *argv]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_refuses_a_folder_that_holds_a_search(tmp_path, capsys) -> None:
    (tmp_path / "study.db").write_bytes(b"")
    assert main(["search", "--output", str(tmp_path), "--budget-ms", "50"]) == EXIT_USER_ERROR
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "study.db").exists()


def test_resume_needs_a_search(tmp_path, capsys) -> None:
    assert main(["search", "--output", str(tmp_path), "--resume"]) == EXIT_USER_ERROR
    assert "holds no search" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_search_end_to_end(tmp_path) -> None:
    out = tmp_path / "s"
    argv = ["search", "--output", str(out), "--budget-ratio", "1.0", "--trials", "2", "--final-top", "1",
            "--final-epochs", "1", "--proxy-train", "256", "--proxy-eval", "256", "--proxy-epochs", "1",
            "--batch", "8", "--timing-repeats", "1", "--depths", "1-2,1-2,1-3,1-3",
            "--config", "configs/fashion_mnist.yaml"]
    assert main(argv) == 0
    for name in ("study.db", "latency.json", "trials.csv", "pareto.png", "final.csv", "winners.txt"):
        assert (out / name).is_file()
    import timm

    layout = (out / "winners.txt").read_text().split("\t")[0]
    timm.create_model("ascan_nano", layout=layout)


def test_finalists_come_from_complete_trials_only() -> None:
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState, create_trial

    from ascan.search.cli import best_layouts

    def trial(layout, value, state, intermediate=None):  # Optuna stores a pruned trial's last report as its value
        return create_trial(state=state, value=value, params={"x": 0}, distributions={"x": IntDistribution(0, 1)},
                            user_attrs={"layout": layout}, intermediate_values=intermediate or {})

    trials = [trial("C-C-C-C", 80.0, TrialState.COMPLETE), trial("C-C-C-T", 85.0, TrialState.COMPLETE),
              trial("C-C-T-T", 99.0, TrialState.PRUNED, {0: 99.0}), trial("C-T-T-T", 90.0, TrialState.COMPLETE)]
    assert best_layouts(trials, 2) == ["C-T-T-T", "C-C-C-T"]
    assert best_layouts(trials, 5) == ["C-T-T-T", "C-C-C-T", "C-C-C-C"]


@pytest.mark.parametrize("storage, message", [
    ("nosuchdb://host/db", "is not a database URL ascan can open"),
    ("sqlite:////nonexistent-folder/ascan/study.db", "cannot open the study database"),
    ("postgresql://nobody@127.0.0.1:1/db", "--storage 'postgresql://nobody@127.0.0.1:1/db'"),
    ("not a url at all", "is not a database URL ascan can open"),
])
def test_a_bad_storage_is_one_line_before_any_latency_measurement(tmp_path, capsys, monkeypatch, storage,
                                                                     message) -> None:
    def no_measuring(*args, **kwargs):
        raise AssertionError("the latency table was measured before the storage was checked")

    monkeypatch.setattr("ascan.search.cli._table", no_measuring)
    assert main(["search", "--output", str(tmp_path / "s"), "--budget-ms", "50", "--storage", storage]) == \
        EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_study_file_that_is_not_a_database_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("ascan.search.cli._table", lambda *a, **k: pytest.fail("measured before the check"))
    (tmp_path / "study.db").write_text("these are my notes, not a database\n" * 100)
    assert main(["search", "--output", str(tmp_path), "--resume"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "study file" in err and "file is not a database" in err and err.count("\n") == 1
