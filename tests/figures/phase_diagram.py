"""Phase diagram of water (schematic): solid, liquid and gas regions, triple and critical points."""
import matplotlib.pyplot as plt
import numpy as np

T_triple, P_triple = 273.16, 0.006
T_crit, P_crit = 647.1, 218.0

T_sub = np.linspace(200, T_triple, 50)
P_sub = P_triple * np.exp(6140 * (1 / T_triple - 1 / T_sub))
T_vap = np.linspace(T_triple, T_crit, 100)
P_vap = P_triple * np.exp(np.log(P_crit / P_triple) * (1 / T_triple - 1 / T_vap)
                          / (1 / T_triple - 1 / T_crit))
P_fus = np.logspace(np.log10(P_triple), 3, 50)
T_fus = T_triple - 0.0075 * (P_fus - P_triple)  # negative slope: ice is less dense

fig, ax = plt.subplots(figsize=(8, 6))
ax.fill_between(np.r_[T_sub, T_vap], 1e-4, np.r_[P_sub, P_vap], color="#fde9c9")
ax.fill_betweenx(P_fus, 150, T_fus, color="#cfe8ff")
ax.plot(T_sub, P_sub, color="black", lw=2)
ax.plot(T_vap, P_vap, color="black", lw=2)
ax.plot(T_fus, P_fus, color="black", lw=2)
ax.plot(T_triple, P_triple, "o", color="tab:red", ms=8)
ax.plot(T_crit, P_crit, "o", color="tab:purple", ms=8)
ax.annotate("triple point\n273.16 K, 0.006 atm", (T_triple, P_triple), xytext=(330, 1e-3),
            arrowprops=dict(arrowstyle="->"))
ax.annotate("critical point\n647 K, 218 atm", (T_crit, P_crit), xytext=(560, 2e3),
            arrowprops=dict(arrowstyle="->"))
ax.text(210, 10, "SOLID\n(ice)", fontsize=15, ha="center")
ax.text(420, 50, "LIQUID", fontsize=15, ha="center")
ax.text(520, 1e-2, "GAS\n(vapour)", fontsize=15, ha="center")
ax.set_yscale("log")
ax.set_xlim(150, 750)
ax.set_ylim(1e-4, 1e4)
ax.set_xlabel("Temperature (K)")
ax.set_ylabel("Pressure (atm)")
ax.set_title("Phase diagram of water")
fig.tight_layout()
