"""Series circuit: a battery and three resistors drawn from lines, with labels and current."""
import matplotlib.pyplot as plt
import numpy as np


def resistor(ax, x0, y0, x1, y1, label, n=6, amp=0.12):
    """A zig-zag resistor between two points, with a label beside it."""
    length = np.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    lead = 0.2 * length
    s = np.concatenate([[0, lead], np.linspace(lead, length - lead, 2 * n + 1), [length]])
    offset = np.zeros_like(s)
    offset[2:-2:2] = amp
    offset[3:-2:2] = -amp
    xs = x0 + s * ux - offset * uy
    ys = y0 + s * uy + offset * ux
    ax.plot(xs, ys, color="black", lw=2)
    ax.text((x0 + x1) / 2 - 0.35 * uy, (y0 + y1) / 2 + 0.35 * ux, label, ha="center",
            va="center", fontsize=13)


def battery(ax, x, y0, y1, label):
    mid = (y0 + y1) / 2
    ax.plot([x, x], [y0, mid - 0.1], color="black", lw=2)
    ax.plot([x, x], [mid + 0.1, y1], color="black", lw=2)
    ax.plot([x - 0.3, x + 0.3], [mid + 0.1, mid + 0.1], color="black", lw=3)  # long plate: +
    ax.plot([x - 0.15, x + 0.15], [mid - 0.1, mid - 0.1], color="black", lw=5)
    ax.text(x - 0.6, mid, label, ha="right", va="center", fontsize=13)
    ax.text(x + 0.4, mid + 0.25, "+", fontsize=14)


fig, ax = plt.subplots(figsize=(8, 6))
battery(ax, 0, 0, 4, r"$\varepsilon = 12\,\mathrm{V}$")
ax.plot([0, 1], [4, 4], color="black", lw=2)
resistor(ax, 1, 4, 4, 4, r"$R_1 = 2\,\Omega$")
ax.plot([4, 5], [4, 4], color="black", lw=2)
resistor(ax, 5, 4, 5, 0, r"$R_2 = 4\,\Omega$")
ax.plot([5, 4], [0, 0], color="black", lw=2)
resistor(ax, 4, 0, 1, 0, r"$R_3 = 6\,\Omega$")
ax.plot([1, 0], [0, 0], color="black", lw=2)
ax.annotate("", xy=(2.9, 3.5), xytext=(2.1, 3.5),
            arrowprops=dict(arrowstyle="->", color="tab:red", lw=2))
ax.text(2.5, 3.1, r"$I = 1\,\mathrm{A}$", color="tab:red", ha="center", fontsize=13)
for x, y in [(0, 0), (0, 4), (5, 4), (5, 0)]:
    ax.plot(x, y, "o", color="black", ms=5)
ax.set_xlim(-2, 6.5)
ax.set_ylim(-1, 5.5)
ax.set_aspect("equal")
ax.axis("off")
ax.set_title("Series circuit")
