"""The health bar and the level rule (fedgen_pl/health.py), on hand-made runs."""

import pytest

from fedgen_pl.health import health_bar, level, saturated_share

ROUNDS = [20, 40, 60, 80, 100]


def test_a_run_that_recovers_from_warm_up_and_ends_at_eight_meets_the_twenty_label_bar():
    assert health_bar(ROUNDS, [1.0, 5.5, 9.2, 11.3, 8.0], labels=20)      # round 20 is warm-up: 1.0 allowed


def test_a_collapse_after_warm_up_fails_however_the_run_ends():
    assert not health_bar(ROUNDS, [3.0, 1.19, 9.0, 11.0, 13.0], labels=20)


def test_the_final_bar_is_four_tenths_of_the_labels():
    assert not health_bar(ROUNDS, [2.0, 5.0, 7.0, 7.5, 7.99], labels=20)
    assert health_bar(ROUNDS, [2.0, 3.0, 3.5, 3.9, 4.0], labels=10)
    assert not health_bar(ROUNDS, [2.0, 3.0, 3.5, 3.9, 3.99], labels=10)


def test_an_async_run_has_no_final_bar_but_keeps_the_floor():
    assert health_bar(ROUNDS, [2.6, 3.8, 6.9, 8.6, 7.0], labels=20, final_bar=False)
    assert not health_bar(ROUNDS, [2.6, 1.1, 6.9, 8.6, 9.0], labels=20, final_bar=False)


def test_level_against_the_reference_seeds_spread():
    # reference 100, 110, 120: mean 110, std 10 (n - 1). 118 is 8 away: level; 121 is 11 away: not.
    assert level([116, 120], [100, 110, 120]) == (True, 8.0, 10.0)
    ok, gap, spread = level([121], [100, 110, 120])
    assert (ok, gap, spread) == (False, 11.0, 10.0)


@pytest.mark.parametrize("call", [lambda: health_bar([], [], 20), lambda: health_bar([20], [1.0, 2.0], 20),
                                  lambda: health_bar([20], [1.0], 0), lambda: level([1.0], [2.0]),
                                  lambda: level([], [1.0, 2.0])])
def test_malformed_input_is_refused(call):
    with pytest.raises(ValueError):
        call()


def test_saturated_share_counts_losses_below_a_hundredth_past_iteration_200():
    steps = [10, 100, 200, 210, 220, 230, 240, 250]
    losses = [0.0, 0.0, 0.0, 0.009, 0.5, 0.01, 0.0, 1.2]     # the first three are at or before 200: not counted
    assert saturated_share(steps, losses) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="after iteration 200"):
        saturated_share([10, 200], [0.0, 0.0])
