"""The convergence rule behind schedule: full, on hand-made curves."""

import pytest

from fedgen_pl.convergence import convergence_round, smoothed


def test_smoothing_is_a_running_median_of_three():
    assert smoothed([10, 1, 8, 7, 100, 6]) == [5.5, 8, 7, 8, 7, 53]


def test_first_round_whose_next_fifth_improves_less_than_five_percent():
    rounds = list(range(100, 1001, 100))
    fids = [400, 200, 100, 60, 50, 49, 48, 47.5, 47, 46.9]
    # window: the next 200 rounds. Smoothed: ... 60 (400), 50 (500), 49, 48 ...
    # at 400: min(50, 49) = 49 < 0.95 x 60 = 57: not yet; at 500: min(49, 48) = 48 >= 0.95 x 50 = 47.5
    assert convergence_round(rounds, fids) == 500


def test_a_curve_still_falling_in_its_last_fifth_has_not_converged():
    rounds = list(range(100, 1001, 100))
    fids = [400 * 0.8 ** i for i in range(10)]        # 20% better every evaluation
    assert convergence_round(rounds, fids) is None


def test_one_lucky_evaluation_does_not_decide():
    rounds = list(range(100, 1001, 100))
    fids = [400, 200, 100, 20, 90, 80, 70, 60, 55, 54]   # round 400 is a fluke
    assert convergence_round(rounds, fids) != 400


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError):
        convergence_round([1, 2], [3.0])


def test_a_run_still_going_decides_only_rounds_whose_window_it_has_seen():
    rounds = list(range(100, 601, 100))                     # a 1000-round run, evaluated up to 600
    fids = [400, 200, 100, 60, 50, 49]
    assert convergence_round(rounds, fids, total_rounds=1000) is None      # 500 needs rounds up to 700
    assert convergence_round(rounds + [700], fids + [48], total_rounds=1000) == 500
