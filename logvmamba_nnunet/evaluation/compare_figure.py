"""The comparison figure: per label/region, box plots of the per-case Dice of every model, one colour per model."""

from __future__ import annotations

from pathlib import Path

from logvmamba_nnunet.evaluation.compare import Comparison

FIGURE_SIZE_INCHES = (10.0, 5.0)
FIGURE_DPI = 100  # so the PNG is always 1000 x 500 pixels


def draw_dice_boxplots(comparison: Comparison, path: Path) -> None:
    """Write the figure as PNG to ``path`` (Agg canvas, no pyplot state; any file name)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    colours = matplotlib.colormaps["tab10"]
    n_models = len(comparison.models)
    width = 0.8 / n_models
    positions = range(len(comparison.targets))
    for index, model in enumerate(comparison.models):
        colour = colours(index % 10)
        data = [list(comparison.per_case(model.label, target.name, "dice").values())
                for target in comparison.targets]
        offset = (index - (n_models - 1) / 2) * width
        boxes = axes.boxplot(data, positions=[p + offset for p in positions], widths=0.9 * width,
                             patch_artist=True, manage_ticks=False, medianprops={"color": "black"},
                             flierprops={"markeredgecolor": colour, "markersize": 3})
        for box in boxes["boxes"]:
            box.set_facecolor(colour)
    axes.set_xticks(list(positions), [target.name for target in comparison.targets])
    axes.set_xlim(-0.5, len(comparison.targets) - 0.5)
    axes.set_ylabel("Dice per case")
    n_cases = len(comparison.per_case(comparison.reference, comparison.targets[0].name, "dice"))
    axes.set_title(f"{comparison.dataset} {comparison.configuration}: {n_cases} validation cases, folds "
                   f"{', '.join(map(str, comparison.folds))}")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(handles=[Patch(facecolor=colours(i % 10), edgecolor="black", label=model.label)
                         for i, model in enumerate(comparison.models)],
                loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0)
    figure.subplots_adjust(left=0.07, right=0.68, top=0.92, bottom=0.08)  # room for the legend on the right
    figure.savefig(path, format="png", dpi=FIGURE_DPI)
