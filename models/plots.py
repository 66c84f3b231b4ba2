"""Evaluation figures: calibration, ROC, predicted-vs-true effect and Qini curves.

Each function takes the long DataFrame made by the matching `models.evaluation.*_data` function (the same data
DVC renders) and returns a matplotlib `Figure` drawn on an Agg canvas, without pyplot, so no global figure
state is touched; the caller saves it. Colours follow the Okabe–Ito colour-blind-safe palette, one fixed
colour per option in display order, so an option looks the same in every figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Okabe & Ito (2008), ordered so the low-contrast yellow comes last; black is kept for reference lines.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
REFERENCE_COLOUR = "#000000"


def option_colours(options: Sequence[str]) -> dict[str, str]:
    """Fixed Okabe–Ito colour per option, by display order (cycles after seven options)."""
    return {option: OKABE_ITO[i % len(OKABE_ITO)] for i, option in enumerate(options)}


def _new_figure(n_panels: int = 1, *, ncols: int = 3, panel_size: float = 4.0) -> tuple[Figure, list[Axes]]:
    """A Figure on an Agg canvas with `n_panels` axes in a grid (unused grid cells are not created)."""
    cols = max(1, min(ncols, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    fig = Figure(figsize=(panel_size * cols + 1.5, panel_size * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(max(n_panels, 1))]
    return fig, axes


def _require(data: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Fail clearly when a plot's data frame lacks a column."""
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise ValueError(f"{what} data: column(s) {missing} missing; build it with models.evaluation")


def _display_order(
    data: pd.DataFrame, options: Sequence[str] | None, labels: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str]]:
    """Options present in `data` in display order, and a colour per option fixed by its place in the full list.

    The full list is `options`, else the keys of `labels` (options.yaml order), then any other option in
    order of appearance; fixing colours on the full list keeps an option's colour the same in every figure,
    including those that leave the control out.
    """
    present = list(pd.unique(data["option"]))
    reference = list(options) if options is not None else list(labels or {})
    full = reference + [o for o in present if o not in reference]
    return [o for o in full if o in present], option_colours(full)


def plot_calibration(
    data: pd.DataFrame,
    *,
    labels: Mapping[str, str] | None = None,
    options: Sequence[str] | None = None,
    title: str = "Calibration: predicted vs observed response",
) -> Figure:
    """Calibration curves, one line per option, against the diagonal of perfect calibration."""
    _require(data, ["option", "mean_predicted", "observed_rate", "n"], "calibration")
    names = dict(labels or {})
    order, palette = _display_order(data, options, labels)
    fig, (ax,) = _new_figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE_COLOUR, linewidth=1, label="perfect calibration")
    for option in order:
        g = data[data["option"] == option]
        ax.plot(
            g["mean_predicted"],
            g["observed_rate"],
            marker="o",
            color=palette[option],
            label=f"{names.get(option, option)} (n={int(g['n'].sum())})",
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        title=title,
        xlabel="Predicted probability of response",
        ylabel="Observed response rate",
    )
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    return fig


def plot_roc(
    data: pd.DataFrame,
    *,
    labels: Mapping[str, str] | None = None,
    options: Sequence[str] | None = None,
    title: str = "Discrimination: ROC curve by option",
) -> Figure:
    """ROC curves, one line per option (legend shows its AUROC), against the chance diagonal."""
    _require(data, ["option", "false_positive_rate", "true_positive_rate"], "ROC")
    names = dict(labels or {})
    order, palette = _display_order(data, options, labels)
    fig, (ax,) = _new_figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color=REFERENCE_COLOUR, linewidth=1, label="chance (AUROC 0.50)")
    for option in order:
        g = data[data["option"] == option]
        fpr, tpr = g["false_positive_rate"].to_numpy(), g["true_positive_rate"].to_numpy()
        area = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, color=palette[option], label=f"{names.get(option, option)} (AUROC {area:.2f})")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        title=title,
        xlabel="1 − specificity (false-positive rate)",
        ylabel="Sensitivity (true-positive rate)",
    )
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    return fig


def plot_effect_scatter(
    data: pd.DataFrame,
    *,
    labels: Mapping[str, str] | None = None,
    options: Sequence[str] | None = None,
    control_label: str = "continue current regimen",
    title: str = "Predicted vs true benefit of each option (simulated cohort)",
) -> Figure:
    """One panel per option: predicted vs true effect against the control, with the identity line."""
    _require(data, ["option", "true_effect", "predicted_effect"], "effect scatter")
    names = dict(labels or {})
    order, palette = _display_order(data, options, labels)
    fig, axes = _new_figure(len(order))
    values = data[["true_effect", "predicted_effect"]].to_numpy()
    low, high = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    lim = (low - pad, high + pad)
    for ax, option in zip(axes, order, strict=False):
        g = data[data["option"] == option]
        ax.plot(lim, lim, linestyle="--", color=REFERENCE_COLOUR, linewidth=1, label="prediction = truth")
        ax.scatter(
            g["true_effect"],
            g["predicted_effect"],
            s=6,
            alpha=0.4,
            color=palette[option],
            label=f"decisions (n={len(g)})",
        )
        ax.set(
            xlim=lim,
            ylim=lim,
            title=f"{names.get(option, option)} vs {control_label}",
            xlabel="True change in response probability",
            ylabel="Predicted change in response probability",
        )
        ax.legend(loc="upper left", fontsize="small", frameon=False)
    fig.suptitle(title)
    return fig


def plot_qini(
    data: pd.DataFrame,
    *,
    labels: Mapping[str, str] | None = None,
    options: Sequence[str] | None = None,
    control_label: str = "continue current regimen",
    title: str = "Qini curves: extra responders when treating those with the most predicted benefit",
) -> Figure:
    """One panel per option: the Qini curve vs control and the random-targeting baseline."""
    _require(data, ["option", "fraction_targeted", "qini", "random"], "Qini")
    names = dict(labels or {})
    order, palette = _display_order(data, options, labels)
    fig, axes = _new_figure(len(order))
    for ax, option in zip(axes, order, strict=False):
        g = data[data["option"] == option]
        ax.plot(g["fraction_targeted"], g["qini"], color=palette[option], label="ranked by the model")
        ax.plot(
            g["fraction_targeted"],
            g["random"],
            linestyle="--",
            color=REFERENCE_COLOUR,
            linewidth=1,
            label="random targeting",
        )
        ax.axhline(0, color="#999999", linewidth=0.5)
        ax.set(
            xlim=(0, 1),
            title=f"{names.get(option, option)} vs {control_label}",
            xlabel="Share of decisions treated (most benefit first)",
            ylabel="Additional responders",
        )
        ax.legend(loc="upper left", fontsize="small", frameon=False)
    fig.suptitle(title)
    return fig
