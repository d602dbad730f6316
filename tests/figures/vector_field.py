"""Electric field of a dipole: field lines (streamplot), direction arrows (quiver), a 3-D view."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Circle

charges = [(1.0, (-1.0, 0.0)), (-1.0, (1.0, 0.0))]
x, y = np.meshgrid(np.linspace(-3, 3, 80), np.linspace(-2.5, 2.5, 70))
Ex, Ey = np.zeros_like(x), np.zeros_like(y)
for q, (cx, cy) in charges:
    r3 = np.hypot(x - cx, y - cy) ** 3 + 1e-9
    Ex += q * (x - cx) / r3
    Ey += q * (y - cy) / r3

fig = plt.figure(figsize=(12, 5))
ax = fig.add_subplot(1, 2, 1)
ax.streamplot(x, y, Ex, Ey, color=np.log(np.hypot(Ex, Ey)), cmap="inferno", density=1.4,
              linewidth=1, arrowsize=1)
xs, ys = x[::7, ::8], y[::7, ::8]
ex, ey = Ex[::7, ::8], Ey[::7, ::8]
n = np.hypot(ex, ey)
ax.quiver(xs, ys, ex / n, ey / n, color="gray", alpha=0.6, scale=30)
for q, (cx, cy) in charges:
    ax.add_patch(Circle((cx, cy), 0.15, color="tab:red" if q > 0 else "tab:blue", zorder=3))
    ax.text(cx, cy, "+" if q > 0 else "−", color="white", ha="center", va="center",
            fontsize=14, fontweight="bold", zorder=4)
ax.set_aspect("equal")
ax.set_xlabel("x")
ax.set_ylabel("y")
ax.set_title("Electric dipole: field lines")

ax3 = fig.add_subplot(1, 2, 2, projection="3d")
potential = sum(q / (np.hypot(x - cx, y - cy) + 0.3) for q, (cx, cy) in charges)
ax3.plot_surface(x, y, potential, cmap="coolwarm", rstride=3, cstride=3, linewidth=0)
ax3.set_xlabel("x")
ax3.set_ylabel("y")
ax3.set_zlabel("V")
ax3.set_title("Potential V(x, y)")
fig.tight_layout()
