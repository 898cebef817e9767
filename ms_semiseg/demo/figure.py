"""The demo's picture: a PNG grid of val images, their ground truth and each method's prediction (linear head).

Rows are val images picked evenly along the sorted val list (never chosen by result); columns are image, ground
truth, then one column per method read from the `gray/<id>.png` class maps that `ms_semiseg eval --save-dir` writes.
"""
import io
import os
import textwrap

import cv2
import numpy as np

from ..data import VOC_PALETTE, colorize
from ..utils.atomic import write_bytes_atomic

DEFAULT_ROWS = 6
IGNORE_LABEL = 255
LEGEND_INCHES = 0.35  # the class-colour legend under the grid
TITLE_CHARS = 24  # a column title wraps beyond this many characters (a cell is 1.9 inches wide)


def pick_evenly(sample_ids, count=DEFAULT_ROWS):
    """`count` ids spread evenly over the list (all of them when it is shorter)."""
    if len(sample_ids) <= count:
        return list(sample_ids)
    positions = np.linspace(0, len(sample_ids) - 1, count).round().astype(int)
    return [sample_ids[i] for i in positions]


def read_rgb(path):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_class_map(path):
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if label is None:
        raise FileNotFoundError(path)
    return label


def grid_rows(data_root, sample_ids, prediction_dirs):
    """[[image RGB, ground-truth class map, prediction of each method...] per sample] (VOC layout under data_root)."""
    rows = []
    for sample_id in sample_ids:
        row = [read_rgb(os.path.join(data_root, "JPEGImages", f"{sample_id}.jpg")),
               read_class_map(os.path.join(data_root, "SegmentationClassAug", f"{sample_id}.png"))]
        row += [read_class_map(os.path.join(folder, f"{sample_id}.png")) for folder in prediction_dirs]
        rows.append(row)
    return rows


def render_grid(rows, column_titles, class_names, palette=VOC_PALETTE, cell_inches=1.9):
    """PNG bytes: the rows as image cells (class maps coloured with `palette`, ignore shown in its colour) and a
    legend of the class colours."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    num_rows, num_cols = len(rows), len(column_titles)
    height = cell_inches * num_rows + LEGEND_INCHES
    fig, axes = plt.subplots(num_rows, num_cols, figsize=(cell_inches * num_cols, height), squeeze=False)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            axis = axes[r][c]
            axis.imshow(cell if cell.ndim == 3 else colorize(cell, palette), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                # long titles ("mean teacher (no prototypes) (45.6)") would run into the next column
                axis.set_title(textwrap.fill(column_titles[c], TITLE_CHARS), fontsize=9)
    handles = [Patch(color=palette[i] / 255.0, label=name) for i, name in enumerate(class_names)]
    handles.append(Patch(color=palette[IGNORE_LABEL] / 255.0, label="ignore (255)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, LEGEND_INCHES / height, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_prediction_grid(path, data_root, sample_ids, methods, class_names, palette=VOC_PALETTE):
    """Writes the grid PNG atomically. `methods`: [(column title, folder of gray/<id>.png class maps)]."""
    titles = ["image", "ground truth"] + [title for title, _ in methods]
    rows = grid_rows(data_root, sample_ids, [folder for _, folder in methods])
    write_bytes_atomic(path, render_grid(rows, titles, class_names, palette))
    return path
