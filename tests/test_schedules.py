"""Annealing schedules: start, middle, end, past the end, independence from call order, and the cool-down."""
import pytest

from gqn.schedules import linear_anneal, with_cooldown


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


def test_cool_down_falls_from_the_schedule_to_its_final_value_over_the_last_steps():
    base = linear_anneal(1e-3, 2.5e-4, 5000, warmup=250)
    lr = with_cooldown(base, 30000, 10000, 2.5e-5)
    assert lr(25000) == pytest.approx(1.375e-4)  # asked first, as after a resume: halfway from 2.5e-4 to 2.5e-5
    assert [lr(s) for s in (0, 100, 2625, 20000)] == [base(s) for s in (0, 100, 2625, 20000)]  # untouched before
    assert lr(30000) == pytest.approx(2.5e-5) and lr(40000) == pytest.approx(2.5e-5)
    assert lr(20001) < lr(20000)
    assert with_cooldown(base, 30000, 0, 2.5e-5) is base  # none: the schedule itself
    assert with_cooldown(base, 300, 300, 0.0)(150) == pytest.approx(base(0) / 2)  # from step 0: its value there
    with pytest.raises(ValueError, match="cool-down steps 301: must be 0..300"):
        with_cooldown(base, 300, 301, 0.0)
