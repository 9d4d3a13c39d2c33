"""evalplus 0.3.1's comparison rules, applied in the parent to decoded, trusted objects.

A mirror of `evalplus.eval.unsafe_execute`'s per-input block (the MBPP/HumanEval special oracles, atol, is_floats,
np.allclose).  Deviation: HumanEval/32 follows the find_zero oracle (docs/RELIABILITY.md).
"""
from __future__ import annotations

from typing import Any


def _evalplus_compare(dataset: str, entry_point: str, inp: Any, out: Any, exp: Any, atol: float) -> tuple[bool, float]:
    """One iteration of evalplus 0.3.1 `unsafe_execute`'s loop body, applied to trusted, decoded objects.
    Returns (passed, atol) -- evalplus mutates atol across the inputs of a phase, so it is threaded through.
    Any exception means "failed", as in evalplus."""
    import numpy as np
    from evalplus.eval import is_floats
    from evalplus.eval._special_oracle import (
        MBPP_OUTPUT_NOT_NONE_TASKS,
        MBPP_OUTPUT_SET_EQ_TASKS,
        _digit_distance_nums,
        _poly,
        _surface_Area,
    )

    try:
        exact_match = out == exp
        if dataset == "mbpp":
            if "are_equivalent" == entry_point:  # Mbpp/164 special oracle
                exact_match = exact_match or True
            elif "sum_div" == entry_point:  # Mbpp/295 special oracle
                exact_match = exact_match or out == 0
            elif "surface_Area" == entry_point:  # Mbpp/581 special oracle
                exact_match = exact_match or abs(out - _surface_Area(*inp)) <= atol
            elif "digit_distance_nums" == entry_point:  # Mbpp/558 special oracle
                exact_match = exact_match or out == _digit_distance_nums(*inp)
            elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                exact_match = set(out) == set(exp)
            elif entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
                if isinstance(out, bool):
                    exact_match = out == exp
                else:
                    exact_match = exp == (out is not None)
        if dataset == "humaneval":
            if "find_zero" == entry_point:
                assert abs(_poly(*inp, out)) <= atol
                return True, atol
        if atol == 0 and is_floats(exp):
            atol = 1e-6  # enforce atol for float comparison
        if not exact_match and atol != 0:
            assert type(out) == type(exp)  # noqa: E721 - evalplus's exact rule
            if isinstance(exp, (list, tuple)):
                assert len(out) == len(exp)
            assert np.allclose(out, exp, rtol=1e-07, atol=atol)
        else:
            assert exact_match
    except BaseException:  # noqa: BLE001 - evalplus counts any exception as a failed input
        return False, atol
    return True, atol


def _needs_values(dataset: str, entry_point: str) -> bool:
    """Tasks whose evalplus verdict is not a function of `out == exp` alone."""
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS, MBPP_OUTPUT_SET_EQ_TASKS

    if dataset == "humaneval":
        return entry_point == "find_zero"
    return entry_point in ("are_equivalent", "sum_div", "surface_Area", "digit_distance_nums") or (
        entry_point in MBPP_OUTPUT_SET_EQ_TASKS or entry_point in MBPP_OUTPUT_NOT_NONE_TASKS
    )
