"""Projectile trajectory with launch velocity components and the highest point marked."""
import matplotlib.pyplot as plt
import numpy as np

g, v0, angle = 9.81, 20.0, np.radians(50)
vx, vy = v0 * np.cos(angle), v0 * np.sin(angle)
t_flight = 2 * vy / g
t = np.linspace(0, t_flight, 200)
x, y = vx * t, vy * t - 0.5 * g * t ** 2
t_top = vy / g
x_top, y_top = vx * t_top, vy ** 2 / (2 * g)

fig, ax = plt.subplots(figsize=(9, 5))
ax.plot(x, y, color="tab:blue", lw=2.5, label="trajectory")
ax.plot(x[::20], y[::20], "o", color="tab:blue", ms=5)
scale = 0.25
ax.arrow(0, 0, vx * scale, 0, head_width=0.4, color="tab:green", length_includes_head=True)
ax.arrow(0, 0, 0, vy * scale, head_width=0.4, color="tab:purple", length_includes_head=True)
ax.arrow(0, 0, vx * scale, vy * scale, head_width=0.4, color="tab:red",
         length_includes_head=True)
ax.text(vx * scale + 0.3, -0.8, r"$v_x = v_0\cos\theta$", color="tab:green")
ax.text(-3.5, vy * scale, r"$v_y = v_0\sin\theta$", color="tab:purple")
ax.text(vx * scale * 0.6, vy * scale + 0.3, r"$\vec{v}_0$", color="tab:red", fontsize=14)
ax.plot([x_top, x_top], [0, y_top], ":", color="gray")
ax.annotate(f"$h_{{max}}$ = {y_top:.1f} m", xy=(x_top, y_top), xytext=(x_top + 5, y_top + 2),
            arrowprops=dict(arrowstyle="->"))
ax.annotate("", xy=(x[-1], -1.2), xytext=(0, -1.2), arrowprops=dict(arrowstyle="<->"))
ax.text(x[-1] / 2, -2.2, f"range R = {x[-1]:.1f} m", ha="center")
ax.axhline(0, color="saddlebrown", lw=3)
ax.set_xlabel("horizontal distance x (m)")
ax.set_ylabel("height y (m)")
ax.set_xlim(-5, x[-1] + 5)
ax.set_ylim(-3, y_top + 5)
ax.set_title(r"Projectile motion, $v_0 = 20$ m/s, $\theta = 50^\circ$")
ax.legend(loc="upper right")
fig.tight_layout()
