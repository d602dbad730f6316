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

from .errors import ScienceT2IError


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


def _mean(values: Sequence[float], what: str) -> float:
    flat: list[float] = []
    for v in values:
        flat.extend(v if isinstance(v, (list, tuple)) else [v])
    if not flat:
        raise ScienceT2IError(f"{what}: no scores arrived; connect a SciScore node's scores")
    if not all(math.isfinite(float(v)) for v in flat):
        raise ScienceT2IError(f"{what}: scores contain NaN or infinity")
    return sum(float(v) for v in flat) / len(flat)


# ----------------------------------------------------------------------------- node

class NormalizedDifferenceNode:
    """Mean SciScore of the IP, EP and SP images (all scored against the implicit prompt)
    and the paper's Normalized Difference."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        score = ("FLOAT", {"forceInput": True, "tooltip": "SciScore scores against the "
                                                         "IMPLICIT prompt"})
        return {"required": {"implicit_scores": score, "explicit_scores": score,
                             "superficial_scores": score}}

    # SciScore outputs one FLOAT per image; take every image of each kind, not just the first.
    INPUT_IS_LIST = True
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("nd", "summary")
    FUNCTION = "compute"
    CATEGORY = "Science-T2I/SciScore"
    OUTPUT_NODE = True
    DESCRIPTION = "ND = 100 (IP - SP) / (EP - SP): 0 = literal reading, 100 = scientific outcome."

    def compute(self, implicit_scores, explicit_scores, superficial_scores):
        ip = _mean(implicit_scores, "implicit_scores")
        ep = _mean(explicit_scores, "explicit_scores")
        sp = _mean(superficial_scores, "superficial_scores")
        nd = normalized_difference(ip, ep, sp)
        if nd is None:
            summary = (f"IP {ip:.3f}  EP {ep:.3f}  SP {sp:.3f}  ND undefined (EP = SP: the "
                       "explicit and superficial images score the same)")
            nd_value = float("nan")
        else:
            summary = f"IP {ip:.3f}  EP {ep:.3f}  SP {sp:.3f}  ND {nd:.1f}"
            nd_value = float(nd)
        return {"ui": {"text": [summary]}, "result": (nd_value, summary)}


NODE_CLASS_MAPPINGS = {"ScienceT2I_NormalizedDifference": NormalizedDifferenceNode}
NODE_DISPLAY_NAME_MAPPINGS = {"ScienceT2I_NormalizedDifference": "Normalized Difference (ND)"}
