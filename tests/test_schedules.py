import pytest

from training import schedules


def test_learning_rate_warmup_peak_and_decay():
    lrs = [schedules.learning_rate(s, 100, 10, 1e-3, 1e-6) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 1e-5


def test_weight_decay_and_ema_endpoints():
    assert schedules.weight_decay(0, 50, 0.04, 0.4) == pytest.approx(0.04)
    assert schedules.weight_decay(50, 50, 0.04, 0.4) == pytest.approx(0.4)
    assert schedules.ema_momentum(0, 50, 0.996, 1.0) == pytest.approx(0.996)
    assert schedules.ema_momentum(50, 50, 0.996, 1.0) == pytest.approx(1.0)
