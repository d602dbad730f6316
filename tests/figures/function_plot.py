"""Damped harmonic oscillator: displacement against time with its envelope."""
import matplotlib.pyplot as plt
import numpy as np

t = np.linspace(0, 10, 500)
A, gamma, omega = 1.0, 0.3, 2 * np.pi * 0.8
x = A * np.exp(-gamma * t) * np.cos(omega * t)

fig, ax = plt.subplots(figsize=(8, 5))
ax.plot(t, x, color="tab:blue", lw=2, label=r"$x(t) = A e^{-\gamma t}\cos(\omega t)$")
ax.plot(t, A * np.exp(-gamma * t), "--", color="tab:red", label=r"envelope $\pm A e^{-\gamma t}$")
ax.plot(t, -A * np.exp(-gamma * t), "--", color="tab:red")
ax.axhline(0, color="black", lw=0.8)
ax.set_xlabel("Time $t$ (s)")
ax.set_ylabel("Displacement $x$ (m)")
ax.set_title("Damped harmonic oscillator")
ax.set_xlim(0, 10)
ax.grid(True, alpha=0.3)
ax.legend(loc="upper right")
plt.tight_layout()
plt.show()
