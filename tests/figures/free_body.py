"""Free-body diagram of a block on an inclined plane: weight, normal force and friction."""
import math

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Polygon

theta = math.radians(30)
fig, ax = plt.subplots(figsize=(8, 6))

# the incline
ax.add_patch(Polygon([[0, 0], [6, 0], [6, 6 * math.tan(theta)]], closed=True,
                     facecolor="#dddddd", edgecolor="black"))
# the block, rotated onto the slope
cx, cy, w, h = 3.6, 3.6 * math.tan(theta), 1.2, 0.8
ux, uy = math.cos(theta), math.sin(theta)      # along the slope
nx, ny = -math.sin(theta), math.cos(theta)     # normal to the slope
corners = [(cx - w / 2 * ux, cy - w / 2 * uy), (cx + w / 2 * ux, cy + w / 2 * uy)]
corners += [(x + h * nx, y + h * ny) for x, y in reversed(corners)]
ax.add_patch(Polygon(corners, closed=True, facecolor="tab:orange", edgecolor="black"))
mx, my = cx + h / 2 * nx, cy + h / 2 * ny  # centre of mass


def force(dx, dy, label, color, offset=(0.15, 0.15)):
    ax.add_patch(FancyArrowPatch((mx, my), (mx + dx, my + dy), arrowstyle="-|>",
                                 mutation_scale=20, color=color, lw=2.5))
    ax.text(mx + dx + offset[0], my + dy + offset[1], label, color=color, fontsize=14)


force(0, -2.2, r"$m\vec{g}$", "tab:blue", (0.1, -0.3))
force(2.2 * nx, 2.2 * ny, r"$\vec{N}$", "tab:green")
force(1.5 * ux, 1.5 * uy, r"$\vec{f}_s$", "tab:red")
ax.plot(mx, my, "ko", ms=5)
ax.text(0.9, 0.12, r"$\theta = 30^\circ$", fontsize=13)
ax.set_xlim(-0.5, 7)
ax.set_ylim(-0.5, 6)
ax.set_aspect("equal")
ax.axis("off")
ax.set_title("Free-body diagram: block at rest on an incline")
plt.tight_layout()
