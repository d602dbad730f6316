"""Grouped bar chart with error bars: measured vs predicted specific heat of metals."""
import matplotlib.pyplot as plt
import numpy as np

metals = ["Al", "Cu", "Fe", "Pb", "Ag"]
measured = np.array([0.90, 0.39, 0.45, 0.13, 0.24])
predicted = np.array([0.92, 0.39, 0.45, 0.12, 0.23])
error = np.array([0.03, 0.02, 0.02, 0.01, 0.01])

x = np.arange(len(metals))
width = 0.38
fig, ax = plt.subplots(figsize=(8, 5))
bars1 = ax.bar(x - width / 2, measured, width, yerr=error, capsize=4, label="measured",
               color="tab:blue")
bars2 = ax.bar(x + width / 2, predicted, width, label="Dulong-Petit", color="tab:orange")
ax.bar_label(bars1, fmt="%.2f", padding=3, fontsize=9)
ax.bar_label(bars2, fmt="%.2f", padding=3, fontsize=9)
ax.set_xticks(x, metals)
ax.set_ylabel(r"Specific heat $c$ (J g$^{-1}$ K$^{-1}$)")
ax.set_title("Specific heat of metals at 25 °C")
ax.set_ylim(0, 1.1)
ax.legend()
ax.spines[["top", "right"]].set_visible(False)
fig.tight_layout()
