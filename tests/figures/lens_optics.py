"""Ray diagram for a converging lens: object beyond 2F forms a real, inverted, smaller image."""
import matplotlib.pyplot as plt
from matplotlib.patches import Ellipse

f, d_o, h_o = 2.0, 5.0, 1.5
d_i = 1 / (1 / f - 1 / d_o)
h_i = -h_o * d_i / d_o

fig, ax = plt.subplots(figsize=(10, 5))
ax.axhline(0, color="black", lw=1)  # principal axis
ax.add_patch(Ellipse((0, 0), 0.4, 4.4, facecolor="#bfe3ff", edgecolor="steelblue", lw=2))
for x, label in [(-f, "F"), (f, "F'"), (-2 * f, "2F"), (2 * f, "2F'")]:
    ax.plot(x, 0, "ko", ms=5)
    ax.text(x, -0.35, label, ha="center", fontsize=12)
ax.annotate("", xy=(-d_o, h_o), xytext=(-d_o, 0),
            arrowprops=dict(arrowstyle="-|>", color="tab:green", lw=3))
ax.annotate("", xy=(d_i, h_i), xytext=(d_i, 0),
            arrowprops=dict(arrowstyle="-|>", color="tab:orange", lw=3))
ax.text(-d_o, h_o + 0.2, "object", ha="center", color="tab:green")
ax.text(d_i, h_i - 0.4, "image", ha="center", color="tab:orange")
# 1: parallel to the axis, then through F'
ax.plot([-d_o, 0, d_i], [h_o, h_o, h_i], color="tab:red", lw=1.5)
# 2: through the optical centre, undeviated
ax.plot([-d_o, d_i], [h_o, h_i], color="tab:blue", lw=1.5)
# 3: through F, then parallel to the axis
ax.plot([-d_o, 0, d_i], [h_o, h_i, h_i], color="tab:purple", lw=1.5)
ax.text(-6.8, 2.1, rf"$\frac{{1}}{{f}} = \frac{{1}}{{d_o}} + \frac{{1}}{{d_i}}$,"
        rf"  $d_i = {d_i:.2f}$", fontsize=13)
ax.set_xlim(-7, 6)
ax.set_ylim(-2.5, 2.5)
ax.set_aspect("equal")
ax.axis("off")
ax.set_title("Converging lens: ray diagram")
