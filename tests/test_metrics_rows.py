"""metrics.jsonl has exactly one row per step after any restart (real files, the real logger)."""
import json

from megatron_nft.metrics import MetricsLogger, read_metrics


def _write(path, rows, torn=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def test_fresh_restart_drops_the_killed_runs_rows(tmp_path):
    _write(tmp_path / "metrics.jsonl", [{"step": 0, "eval/accuracy": 0.1}, {"step": 1, "x": 1.0}])
    m = MetricsLogger(str(tmp_path), tensorboard=False, resume_step=0)
    m.log(0, {"eval/accuracy": 0.2})
    m.log(1, {"x": 2.0})
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == [{"step": 0, "eval/accuracy": 0.2}, {"step": 1, "x": 2.0}]


def test_resume_merges_a_second_log_of_the_same_step(tmp_path):
    """Stopped after step 2's update but before its eval: the resumed run logs step 2's eval,
    which joins step 2's row; the torn line and step 3 of the lost future are gone."""
    _write(tmp_path / "metrics.jsonl", [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}, {"step": 3, "x": 3.0}],
           torn='{"step": 4, "x"')
    m = MetricsLogger(str(tmp_path), tensorboard=False, resume_step=2)
    m.log(2, {"eval/accuracy": 0.5})
    m.log(3, {"x": 3.5})
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1] == {"step": 2, "x": 2.0, "eval/accuracy": 0.5} and rows[2] == {"step": 3, "x": 3.5}
