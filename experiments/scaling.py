"""Scaling laws from a sweep's pretraining runs: the Chinchilla form L(N, D) = E + A/N^alpha +
B/D^beta fitted with scipy.optimize.least_squares, its extrapolation to the largest model left
out of the fit, and IsoFLOP curves with the compute-optimal N(C) and D(C) (C = 6 N D).

N counts the non-embedding parameters (the transformer blocks and the final norm), D the tokens
seen, L the validation loss in nats per token (pretrain's meta.json figures).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

PARAMS = ("E", "A", "B", "alpha", "beta")


def law(p: dict, n, d):
    return p["E"] + p["A"] / np.power(n, p["alpha"]) + p["B"] / np.power(d, p["beta"])


def fit(n, d, loss) -> dict:
    """The least-squares fit of the law to the log of the losses (relative errors weigh alike),
    E, A, B kept positive through their logs, from a grid of starting points; the best fit's
    parameters and its RMS relative error."""
    from scipy.optimize import least_squares

    n, d, loss = (np.asarray(x, np.float64) for x in (n, d, loss))

    def unpack(x):
        return {"E": math.exp(x[0]), "A": math.exp(x[1]), "B": math.exp(x[2]),
                "alpha": x[3], "beta": x[4]}

    def residuals(x):
        return np.log(law(unpack(x), n, d)) - np.log(loss)

    best = None
    for e, a, b, al, be in itertools.product((-2.0, 0.0), (0.0, 4.0, 8.0), (0.0, 4.0, 8.0),
                                             (0.2, 0.5, 1.0), (0.2, 0.5, 1.0)):
        e0 = math.log(max(min(loss) * 0.5, 1e-3)) if e == 0.0 else e
        r = least_squares(residuals, [e0, a, b, al, be], bounds=(
            [-10, -10, -10, 0.01, 0.01], [5, 30, 30, 3.0, 3.0]), method="trf")
        if best is None or r.cost < best.cost:
            best = r
    p = unpack(best.x)
    p["rms_rel_error"] = float(np.sqrt(np.mean(np.expm1(best.fun) ** 2)))
    return p


def optimal(p: dict, c: float) -> tuple[float, float]:
    """The compute-optimal (N, D) for C = 6 N D FLOPs under the law (Chinchilla's eq. 4)."""
    a, b = p["alpha"], p["beta"]
    g = (a * p["A"] / (b * p["B"])) ** (1 / (a + b))
    n = g * (c / 6) ** (b / (a + b))
    return n, c / (6 * n)


def non_embedding_params(meta: dict) -> int:
    m = meta["model"]
    embed = m["vocab_size"] * m["d_model"] * (1 if m.get("tie_embeddings", True) else 2)
    return int(meta["n_params"]) - embed


def points(root: Path, runs) -> list[dict]:
    """(N, D, L) of every finished run of the sweep."""
    from train.stage import read_meta

    out = []
    for r in runs:
        meta = read_meta(root / r.id / "pretrain")
        f = (meta or {}).get("figures", {})
        if meta and "val_loss" in f and "tokens_seen" in f and (root / r.id /
                                                                 "sweep_run.json").is_file():
            out.append({"run": r.id, "N": non_embedding_params(meta), "D": f["tokens_seen"],
                        "L": f["val_loss"]})
    return out


def scaling_section(sweep, root: Path, runs, plots: Path) -> str:
    """The markdown the sweep's results.md gets: the fit, its held-out error, the IsoFLOP plot."""
    pts = points(root, runs)
    sizes = sorted({p["N"] for p in pts})
    if len(sizes) < 3 or len({p["D"] for p in pts}) < 2:
        return "## Scaling law\n\nnot enough finished runs to fit (3 sizes x 2 budgets at least)\n"
    largest = sizes[-1]
    train = [p for p in pts if p["N"] != largest]
    held = [p for p in pts if p["N"] == largest]
    p_fit = fit([x["N"] for x in train], [x["D"] for x in train], [x["L"] for x in train])
    p_all = fit([x["N"] for x in pts], [x["D"] for x in pts], [x["L"] for x in pts])
    for x in pts:
        x["pred"] = float(law(p_fit, x["N"], x["D"]))
    errs = [abs(x["pred"] - x["L"]) / x["L"] for x in held]
    lines = ["## Scaling law\n",
             "L(N, D) = E + A/N^alpha + B/D^beta, least squares on log L "
             "(scipy.optimize.least_squares), N = non-embedding parameters, D = tokens seen, "
             "L = validation loss (nats per token).\n",
             "| fit | E | A | B | alpha | beta | RMS relative error |", "|---|---|---|---|---|---|---|"]
    for name, p in ((f"without the largest model (N={largest:,})", p_fit), ("all runs", p_all)):
        lines.append(f"| {name} | {p['E']:.4g} | {p['A']:.4g} | {p['B']:.4g} | "
                     f"{p['alpha']:.3f} | {p['beta']:.3f} | {p['rms_rel_error']:.2%} |")
    lines += ["", f"Extrapolation to the {len(held)} runs of the largest model, left out of the "
              f"fit: mean relative error {np.mean(errs):.2%}, max {np.max(errs):.2%}.\n",
              "| run | N | D | L measured | L predicted (fit without the largest) |",
              "|---|---|---|---|---|"]
    for x in sorted(pts, key=lambda x: (x["N"], x["D"])):
        lines.append(f"| {x['run']} | {x['N']:,} | {x['D']:,} | {x['L']:.4f} | {x['pred']:.4f} |")
    cs = sorted({6.0 * x["N"] * x["D"] for x in pts})
    levels = np.geomspace(cs[0], cs[-1], 4)
    lines += ["", "Compute-optimal allocation under the fit on all runs:\n",
              "| C (FLOPs) | N_opt | D_opt | tokens per parameter |", "|---|---|---|---|"]
    for c in [*levels, cs[-1] * 100]:
        n_opt, d_opt = optimal(p_all, c)
        lines.append(f"| {c:.3g} | {n_opt:,.0f} | {d_opt:,.0f} | {d_opt / n_opt:.1f} |")
    _plots(pts, p_all, levels, plots)
    lines += ["", "![loss against tokens](plots/scaling_loss.png)\n",
              "![IsoFLOP curves](plots/isoflop.png)\n"]
    return "\n".join(lines) + "\n"


def _plots(pts: list[dict], p: dict, levels, plots: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, ax, xlabel: str, title: str, name: str) -> None:
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plots / name, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for n in sorted({x["N"] for x in pts}):
        xs = sorted((x for x in pts if x["N"] == n), key=lambda x: x["D"])
        line = ax.plot([x["D"] for x in xs], [x["L"] for x in xs], "o", label=f"N={n:,}")[0]
        d = np.geomspace(min(x["D"] for x in pts), max(x["D"] for x in pts), 50)
        ax.plot(d, law(p, n, d), "-", color=line.get_color(), alpha=0.6)
    save(fig, ax, "tokens D", "measured (points) and the fit on all runs (lines)", "scaling_loss.png")

    fig, ax = plt.subplots(figsize=(6, 3.6))
    opt = [optimal(p, c)[0] for c in levels]  # the curves span the runs and every star
    sizes = [x["N"] for x in pts]
    ns = np.geomspace(min(*sizes, *opt) / 3, max(*sizes, *opt) * 3, 80)
    for c in levels:
        line = ax.plot(ns, law(p, ns, c / (6 * ns)), label=f"C={c:.2g}")[0]
        n_opt, d_opt = optimal(p, c)
        ax.plot([n_opt], [law(p, n_opt, d_opt)], "*", color=line.get_color(), markersize=10)
    ax.scatter(sizes, [x["L"] for x in pts], c="k", s=10, label="runs")
    save(fig, ax, "non-embedding parameters N", "IsoFLOP curves of the fit (star: compute-optimal N)",
         "isoflop.png")
