"""Skeletal formula of phenol: a benzene ring with alternating double bonds and an OH group."""
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np


@dataclass(frozen=True)
class Bond:
    a: int
    b: int
    order: int = 1


angles = np.radians(90 + 60 * np.arange(6))
atoms = np.stack([np.cos(angles), np.sin(angles)], axis=1)
bonds = [Bond(i, (i + 1) % 6, 2 if i % 2 == 0 else 1) for i in range(6)]
centre = atoms.mean(axis=0)

fig, ax = plt.subplots(figsize=(6, 6))
for bond in bonds:
    p, q = atoms[bond.a], atoms[bond.b]
    ax.plot(*zip(p, q), color="black", lw=2.5)
    if bond.order == 2:  # inner line, shortened, towards the ring's centre
        shrink = 0.15
        p2 = p + (centre - p) * 0.18 + (q - p) * shrink
        q2 = q + (centre - q) * 0.18 - (q - p) * shrink
        ax.plot(*zip(p2, q2), color="black", lw=2.5)
oxygen = atoms[0] + np.array([0, 0.8])
ax.plot(*zip(atoms[0] + [0, 0.02], oxygen - [0, 0.15]), color="black", lw=2.5)
ax.text(*oxygen, "OH", fontsize=22, ha="left", va="center", color="tab:red",
        fontweight="bold")
for i, (x, y) in enumerate(atoms[1:], start=1):
    r = 1.25
    ax.text(x * r, y * r, "H" if i != 0 else "", fontsize=14, ha="center", va="center",
            color="gray")
ax.text(0, -1.9, r"Phenol, C$_6$H$_5$OH", fontsize=16, ha="center")
ax.set_xlim(-2, 2)
ax.set_ylim(-2.2, 2.2)
ax.set_aspect("equal")
ax.axis("off")
