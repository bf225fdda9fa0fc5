"""Generation orders as plain functions: a target (and, for orders derived from a
reference, scores of its tokens) to a schedule, the step at which each position is
produced. Steps start at 0 and leave no gaps; positions produced at the same step are
produced in parallel.
"""

from nargen.orderings.compare import kendall_tau
from nargen.orderings.fixed import (
    SPAN_ORDERS, balanced_tree, left_to_right, right_to_left, span_priority, uniform_random,
)
from nargen.orderings.reference import easiest_first, rarest_first

__all__ = [
    "SPAN_ORDERS", "span_priority", "balanced_tree", "easiest_first", "kendall_tau", "left_to_right", "rarest_first",
    "right_to_left", "uniform_random",
]
