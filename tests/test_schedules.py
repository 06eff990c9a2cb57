"""Annealing schedules: start, middle, end, past the end, and independence from call order."""
import pytest

from gqn.schedules import linear_anneal


def test_sigma_schedule_of_the_paper():
    sigma = linear_anneal(2.0, 0.7, 200000)
    assert sigma(0) == pytest.approx(2.0)
    assert sigma(100000) == pytest.approx(1.35)
    assert sigma(200000) == pytest.approx(0.7)
    assert sigma(10 ** 7) == pytest.approx(0.7)


def test_learning_rate_schedule_is_a_pure_function_of_step():
    lr = linear_anneal(5e-4, 5e-5, 1600000)
    late = lr(3000000)  # asked first, as after a resume: must not depend on earlier calls
    assert late == pytest.approx(5e-5)
    assert lr(800000) == pytest.approx(2.75e-4)
    assert lr(0) == pytest.approx(5e-4)
    assert lr(400000) > lr(400001)


def test_bad_horizon_is_rejected():
    with pytest.raises(ValueError, match="annealing steps"):
        linear_anneal(1.0, 0.5, 0)


def test_learning_rate_warm_up_rises_from_zero_then_decays():
    lr = linear_anneal(2e-3, 5e-4, 3000, warmup=200)
    assert lr(0) == 0.0
    assert lr(100) == pytest.approx(1e-3)
    assert lr(200) == pytest.approx(2e-3)
    assert lr(1600) == pytest.approx(1.25e-3)  # halfway through the decay from step 200 to 3000
    assert lr(3000) == pytest.approx(5e-4) and lr(9000) == pytest.approx(5e-4)
    assert linear_anneal(2e-3, 5e-4, 3000)(0) == pytest.approx(2e-3)  # no warm-up: as before
    with pytest.raises(ValueError, match="warm-up steps"):
        linear_anneal(2e-3, 5e-4, 3000, warmup=3000)
