"""A triangle with its vertices, side lengths and angles labelled (law of cosines)."""
import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Arc

A, B, C = np.array([0.0, 0.0]), np.array([6.0, 0.0]), np.array([2.0, 4.0])


def angle_at(p, q, r):
    """Interior angle at p (degrees) and the directions of its two sides."""
    v1, v2 = q - p, r - p
    a1, a2 = math.degrees(math.atan2(v1[1], v1[0])), math.degrees(math.atan2(v2[1], v2[0]))
    cos = np.dot(v1, v2) / (np.linalg.norm(v1) * np.linalg.norm(v2))
    return math.degrees(math.acos(cos)), a1, a2


fig, ax = plt.subplots(figsize=(7, 6))
ax.fill(*zip(A, B, C), facecolor="#cfe2ff", edgecolor="navy", lw=2)
for name, p, q, r, off in [("A", A, B, C, (-0.4, -0.3)), ("B", B, C, A, (0.15, -0.3)),
                           ("C", C, A, B, (-0.1, 0.2))]:
    ang, a1, a2 = angle_at(p, q, r)
    lo, hi = sorted([a1, a2])
    if hi - lo > 180:
        lo, hi = hi, lo + 360
    ax.add_patch(Arc(p, 1.2, 1.2, theta1=lo, theta2=hi, color="darkred", lw=1.5))
    mid = math.radians((lo + hi) / 2)
    ax.text(p[0] + 0.95 * math.cos(mid), p[1] + 0.95 * math.sin(mid), f"{ang:.1f}°",
            ha="center", va="center", fontsize=11, color="darkred")
    ax.text(p[0] + off[0], p[1] + off[1], name, fontsize=16, fontweight="bold")
for p, q, label in [(A, B, "c"), (B, C, "a"), (C, A, "b")]:
    m = (p + q) / 2
    ax.text(m[0], m[1], f"{label} = {np.linalg.norm(q - p):.2f}", fontsize=12,
            ha="center", va="center", bbox=dict(facecolor="white", edgecolor="none"))
ax.set_aspect("equal")
ax.set_xlim(-1, 7)
ax.set_ylim(-1, 5)
ax.axis("off")
ax.set_title(r"$c^2 = a^2 + b^2 - 2ab\cos C$")
