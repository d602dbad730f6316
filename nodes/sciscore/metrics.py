"""The paper's text-to-image metrics, shared by the ND node and ``science-t2i eval-t2i``.

Images generated from the implicit (IP), explicit (EP) and superficial (SP) prompt are all
scored with SciScore against the IMPLICIT prompt; then
  ND = 100 * (IP - SP) / (EP - SP)           (0: the model draws the literal reading,
                                              100: it draws the scientific consequence)
  RI = (F_IP - B_IP) / (B_EP - B_IP)         (fine-tuned F against base B)
"""
from __future__ import annotations

import math
from typing import Sequence

from ..errors import ScienceT2IError


def normalized_difference(ip: float, ep: float, sp: float) -> float | None:
    """ND = 100 * (IP - SP) / (EP - SP); None when EP equals SP (undefined)."""
    if ep == sp:
        return None
    return 100.0 * (ip - sp) / (ep - sp)


def relative_improvement(base_ip: float, base_ep: float, tuned_ip: float) -> float | None:
    """RI = (F_IP - B_IP) / (B_EP - B_IP) as a fraction; None when B_EP equals B_IP."""
    if base_ep == base_ip:
        return None
    return (tuned_ip - base_ip) / (base_ep - base_ip)


def mean_score(values: Sequence[float], what: str) -> float:
    """The mean of a node's score input (lists of FLOAT lists flattened), refusing an empty or
    non-finite input."""
    flat: list[float] = []
    for v in values:
        flat.extend(v if isinstance(v, (list, tuple)) else [v])
    if not flat:
        raise ScienceT2IError(f"{what}: no scores arrived; connect a SciScore node's scores")
    if not all(math.isfinite(float(v)) for v in flat):
        raise ScienceT2IError(f"{what}: scores contain NaN or infinity")
    return sum(float(v) for v in flat) / len(flat)
