"""The lab's dilated CNN: the plain CNN's three layers with hybrid dilation rates (default 1, 2, 5)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from convlab.models.plain_cnn import KERNEL_SIZE, PlainCNN

log = logging.getLogger(__name__)
DILATIONS = (1, 2, 5)  # the default rates


def hdc_problems(rates: Sequence[int], kernel_size: int = 3) -> list[str]:
    """Why `rates` break the hybrid-dilated-convolution rule (Wang et al. 2018); empty if they don't.

    With M_n = r_n and M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i), the largest
    gap between sampled pixels after layer 2 is M_2; it must not exceed the kernel size, or the
    stack samples the input on a grid with holes ("gridding"). Rates with a common factor > 1
    grid for the same reason.
    """
    problems = []
    if len(rates) >= 2:
        m = rates[-1]
        for r in reversed(rates[1:-1]):
            m = max(m - 2 * r, m - 2 * (m - r), r)
        if m > kernel_size:
            problems.append(f"M_2 = {m} > kernel size {kernel_size}")
    factor = math.gcd(*rates)
    if factor > 1:
        problems.append(f"the rates share the common factor {factor}")
    return problems


class HDCNet(PlainCNN):
    """PlainCNN with dilation rates `dilations`; warns when they violate the HDC rule.

    Shapes for a 32×32 input and rates [1, 2, 5]: 32 -> 30 -> 26 -> 16, then GAP and linear;
    parameter count equals PlainCNN's (dilation adds no weights).
    """

    def __init__(
        self, num_classes: int, dilations: Sequence[int] = DILATIONS, kernel_size: int = KERNEL_SIZE, **kwargs
    ) -> None:
        super().__init__(num_classes, dilations=dilations, kernel_size=kernel_size, **kwargs)
        problems = hdc_problems(list(dilations), kernel_size)
        if problems:
            log.warning(
                "model.dilations=%s violate the hybrid-dilated-convolution rule: %s; expect gridding artefacts "
                "(e.g. [1, 2, 5] satisfies it)",
                list(dilations),
                "; ".join(problems),
            )
