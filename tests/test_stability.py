"""UpdateGuard: consecutive non-finite updates stop the run, a finite one resets the count,
and a loss / grad-norm spike past train.spike_factor x the recent median is a warning."""
import pytest

from megatron_nft.stability import NonFiniteError, UpdateGuard


def _guard(**kw):
    logs = []
    return UpdateGuard(log=logs.append, **kw), logs


def test_consecutive_nonfinite_stop_and_reset():
    g, logs = _guard(max_consecutive=2)
    nan = {"train/nonfinite": 1.0, "train/loss": float("nan"), "train/grad_norm": float("nan")}
    g.observe(1, nan)
    assert g.weights_suspect and "update skipped (1 in a row" in logs[-1]
    g.stop_if_exhausted(1)
    g.observe(2, {"train/loss": 1.0, "train/grad_norm": 1.0, "train/nonfinite": 0.0})
    assert not g.weights_suspect
    g.observe(3, nan)
    g.observe(4, nan)
    with pytest.raises(NonFiniteError, match=r"step 4: 2 consecutive updates .* train.lr"):
        g.stop_if_exhausted(4)


def test_spike_warning_against_recent_median():
    g, logs = _guard(spike_factor=10.0)
    for step, gn in enumerate([1.0, 2.0, 3.0, 2.5], 1):  # median of the first three: 2.0
        g.observe(step, {"train/loss": 0.5, "train/grad_norm": gn, "train/nonfinite": 0.0})
    assert logs == []
    g.observe(5, {"train/loss": 0.5, "train/grad_norm": 26.0, "train/nonfinite": 0.0})  # median(1,2,3,2.5)=2.25
    assert len(logs) == 1 and "train/grad_norm 26 is 11.6x its recent median 2.25" in logs[0]
    g0, logs0 = _guard(spike_factor=0.0)
    for step, gn in enumerate([1.0, 1.0, 1.0, 1e6], 1):
        g0.observe(step, {"train/loss": 0.5, "train/grad_norm": gn})
    assert logs0 == []


def test_a_near_zero_sign_changing_loss_is_not_a_spike():
    """The tiny demo's NFT loss hovers around 0 (+-1e-4 .. 1e-3): no warning for that."""
    g, logs = _guard(spike_factor=10.0)
    for step, loss in enumerate([1e-5, -2e-5, 3e-5, 1e-3, -9e-4], 1):
        g.observe(step, {"train/loss": loss, "train/grad_norm": 0.7, "train/nonfinite": 0.0})
    assert logs == []
