"""Evaluation report: ROC / precision-recall curves, score histograms, an image grid, Markdown.

:func:`write_report` turns test labels and anomaly scores (and optionally the test images) into
a folder that can be read on its own::

    out_dir/
        metrics.json    metrics at the threshold, AUROC, AP, plus the config and timings
                        (and ``volume_metrics`` for a dataset of volumes)
        roc.png         ROC curve with the AUROC and the operating point at the threshold
        pr.png          precision-recall curve with the AP and the prevalence baseline
        histogram.png   normal vs abnormal score histograms, threshold as a vertical line
        grid.png        the 8 most and 8 least anomalous test images (only with ``images``)
        overlays.png    anomaly heatmaps over the 4 most and 4 least anomalous test images
                        (only with ``heatmaps``, from a detector that scores patches)
        report.md       all of the above in one page, figures embedded with relative links
        report.html     the same page with every figure embedded: one file for a browser

The numbers come from :mod:`msde_jax.core.metrics`
(:func:`~msde_jax.core.metrics.evaluation_metrics`,
:func:`~msde_jax.core.metrics.roc_curve`, :func:`~msde_jax.core.metrics.precision_recall_curve`);
this module and :mod:`msde_jax.pipeline.report_figures` (the figures) only draw and write
them. The figures need matplotlib (a dependency of msde-jax), imported when
:func:`write_report` or :func:`require_matplotlib` runs. Figures are drawn on
``matplotlib.figure.Figure`` objects with the Agg canvas, without pyplot, so no global state is
touched and nothing is left open.

Labels follow :mod:`msde_jax.core.metrics`: non-zero = abnormal (the positive class), and a higher
score means more anomalous; a test image is predicted abnormal when ``score > threshold``.
"""

import base64
import html
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jax.typing import ArrayLike

from msde_jax._files import shown
from msde_jax.core.metrics import check_scores, evaluation_metrics
from msde_jax.pipeline.evaluation import threshold_promise
from msde_jax.pipeline.report_figures import (
    GRID_PER_ROW,
    MATPLOTLIB_MISSING,
    OVERLAYS_PER_ROW,
    fmt,
    literal,
    missing_heatmaps,
    overlay_indices,
    plot_grid,
    plot_histogram,
    plot_overlays,
    plot_pr,
    plot_roc,
    require_matplotlib,
)

__all__ = [
    "FILES",
    "MATPLOTLIB_MISSING",
    "OVERLAYS_PER_ROW",
    "overlay_indices",
    "require_matplotlib",
    "write_report",
]

FILES = (
    "metrics.json",
    "roc.png",
    "pr.png",
    "histogram.png",
    "grid.png",
    "overlays.png",
    "report.md",
    "report.html",
)
# --------------------------------------------------------------------------------------------
# Files


def _jsonable(value: Any) -> Any:
    """Plain JSON values: NumPy / JAX numbers and arrays unwrapped, paths as strings, NaN null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | bool) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # NumPy / JAX arrays and scalars
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return str(value)


def _md_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):  # 4 significant digits: a ridge of 1e-05 is not 0.0000
        text = f"{value:.4g}" if math.isfinite(value) else str(value)
    elif isinstance(value, str | os.PathLike):
        text = os.fspath(value)
    else:
        text = json.dumps(_jsonable(value))
    return "`" + _md_cell(text).replace("`", "'") + "`"


def _md_cell(text: Any) -> str:
    """``text`` inside a Markdown table cell: on one line (every character ``str.splitlines``
    breaks at as a space) and its ``|`` escaped (``_html`` splits cells on the others only)."""
    return _one_line(text).replace("|", "\\|")


def _one_line(text: Any) -> str:
    return " ".join(str(text).splitlines())


_METRIC_ROWS = (
    ("AUROC", "auroc"),
    ("Average precision", "average_precision"),
    ("Threshold (score > threshold = abnormal)", "threshold"),
    ("F1", "f1"),
    ("Precision", "precision"),
    ("Recall (sensitivity)", "recall"),
    ("Specificity", "specificity"),
    ("False positive rate", "false_positive_rate"),
    ("Accuracy", "accuracy"),
    ("True positives", "tp"),
    ("False positives", "fp"),
    ("True negatives", "tn"),
    ("False negatives", "fn"),
    ("Normal test images", "n_normal"),
    ("Abnormal test images", "n_abnormal"),
)


def _volume_markdown(volume_metrics: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Volume-level metrics",
        "",
        f"A volume's score is the {volume_metrics['aggregate']}; a test volume is abnormal when "
        "it comes from test/abnormal. "
        + (
            "The volume threshold is the 1 − contamination quantile of the training volumes' "
            "scores, each the same aggregate of its slices' out-of-fold scores."
            if volume_metrics.get("threshold") is not None
            else "There is no volume threshold: the training normals hold no volume, or the "
            "detector's training scores are not out of fold (threshold='chi2' or 'none'), so "
            "no quantile of them promises a false-positive rate."
        ),
        "",
        "| Metric | Value |",
        "| --- | ---: |",
    ]
    for label, key in _METRIC_ROWS:
        if key in volume_metrics:
            value = volume_metrics[key]
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            text = "not available" if value is None else fmt(value) if key == "threshold" else text
            lines.append(f"| {label.replace('image', 'volume')} | {text} |")
    return [*lines, ""]


def _markdown(
    title: str,
    metrics: dict[str, Any],
    config: Mapping[str, Any] | None,
    timings: Mapping[str, Any] | None,
    grid: int,
    overlays: int = 0,
    volume_metrics: Mapping[str, Any] | None = None,
    promise: Mapping[str, Any] | None = None,
) -> str:
    lines = [f"# {_one_line(title)}", ""]
    lines += [
        f"{metrics['n_normal'] + metrics['n_abnormal']} test images ({metrics['n_normal']} "
        f"normal, {metrics['n_abnormal']} abnormal). Higher scores are more anomalous; an image "
        f"is predicted abnormal when its score exceeds {fmt(metrics['threshold'])}. All numbers "
        "are also in [`metrics.json`](metrics.json).",
        "",
        "## Metrics",
        "",
        "| Metric | Value |",
        "| --- | ---: |",
    ]
    for label, key in _METRIC_ROWS:
        value = metrics[key]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        if key == "threshold":
            text = fmt(value)
        lines.append(f"| {label} | {text} |")
    lines.append("")
    if promise is not None:
        lines += ["## Does the threshold keep its promise?", "", promise["text"], ""]
    if volume_metrics:
        lines += _volume_markdown(volume_metrics)
    if config:
        lines += ["## Configuration", "", "| Setting | Value |", "| --- | --- |"]
        lines += [f"| {_md_cell(key)} | {_md_value(value)} |" for key, value in config.items()]
        lines.append("")
    if timings:
        lines += ["## Timings", "", "| Step | Seconds |", "| --- | ---: |"]
        for key, value in timings.items():
            text = f"{float(value):.3f}" if isinstance(value, int | float) else _md_value(value)
            lines.append(f"| {_md_cell(key)} | {text} |")
        lines.append("")
    lines += [
        "## Figures",
        "",
        "### ROC curve",
        "",
        "The dot marks the operating point at the threshold.",
        "",
        "![ROC curve](roc.png)",
        "",
        "### Precision-recall curve",
        "",
        "The dashed line is the prevalence of abnormal images (a random ranking's precision).",
        "",
        "![Precision-recall curve](pr.png)",
        "",
        "### Score histograms",
        "",
        "![Score histograms of normal and abnormal test images](histogram.png)",
        "",
    ]
    if grid:
        lines += [
            "### Most and least anomalous test images",
            "",
            f"![The {grid} most and {grid} least anomalous test images](grid.png)",
            "",
        ]
    if overlays:
        lines += [
            "### Where in the image",
            "",
            "Anomaly heatmaps (patch scores, one colour scale; the threshold is the cyan line on "
            f"the colour bar) over the {overlays} most and {overlays} least anomalous test "
            "images.",
            "",
            "![Heatmaps of the most and least anomalous test images](overlays.png)",
            "",
        ]
    return "\n".join(lines)


def _html(markdown: str, out: Path) -> str:
    """``report.md`` as one self-contained HTML page: its headings, paragraphs and tables, and
    every linked figure embedded as a base64 PNG."""
    body, table = [], []

    def flush_table() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            cells = [[c.strip() for c in _CELL.split(r.strip()[1:-1])] for r in rows]
            head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
            rest = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:]
            )
            body.append(f"<table><tr>{head}</tr>{rest}</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif (figure := _FIGURE.fullmatch(line)) and figure[2] in FILES:  # ours, nothing else
            data = base64.b64encode((out / figure[2]).read_bytes()).decode("ascii")
            body.append(f'<img alt="{html.escape(figure[1])}" src="data:image/png;base64,{data}">')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    title = html.escape(markdown.splitlines()[0].lstrip("# "))
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:.25em .6em;text-align:left}img{max-width:100%}code{font-size:90%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


_PROMISED = ("cross_fit", "chi2")  # the threshold rules whose promise the report checks
_CELL = re.compile(r"(?<!\\)\|")  # a table row's cell separators: its unescaped "|"
_FIGURE = re.compile(r"!\[([^\]]*)\]\(([\w.]+)\)")  # a line that is one of our figures
# a code span, or a link outside one (whose text may hold code spans)
_TOKEN = re.compile(r"(`[^`]*`)|\[((?:[^\]`]|`[^`]*`)*)\]\([^)]*\)")


def _inline(text: str) -> str:
    """Markdown inline code, bold and links → HTML (escaped; links to files become plain
    text; code is shown as written, brackets and all)."""
    text = text.replace("\\|", "|")
    out, end = [], 0
    for token in _TOKEN.finditer(text):
        out.append(_plain(text[end : token.start()]))
        code, link = token.groups()
        out.append(f"<code>{html.escape(code[1:-1])}</code>" if code else _inline(link))
        end = token.end()
    out.append(_plain(text[end:]))
    return "".join(out)


def _plain(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def write_report(
    out_dir: str | os.PathLike,
    *,
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    images: Sequence[Any] | None = None,
    names: Sequence[str] | None = None,
    title: str = "MSDE evaluation",
    config: Mapping[str, Any] | None = None,
    timings: Mapping[str, Any] | None = None,
    heatmaps: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    volume_metrics: Mapping[str, Any] | None = None,
    maps_threshold: float | None = None,
    normals_from_volumes: bool | None = None,
) -> dict[str, Any]:
    """Write an evaluation report folder: metrics, curves, histograms, image grid and Markdown.

    Creates ``out_dir`` (and its parents) and writes ``metrics.json``, ``roc.png``, ``pr.png``,
    ``histogram.png``, ``grid.png`` (only when ``images`` are given), ``overlays.png`` (only
    with ``heatmaps``), ``report.md``, which shows the metrics, config and timings and embeds
    the figures with relative links, and ``report.html``, the same page with the figures
    inside it. The files are written to a temporary folder inside ``out_dir`` and moved into
    place once all of them are: a report that fails part-way (an image that cannot be read)
    leaves the folder as it was. Then existing files of those names are removed (an earlier
    report's ``overlays.png`` does not stay beside a report without heatmaps); other files are
    left.

    Args:
        out_dir: the folder to write.
        labels: (n,) bool or 0/1 labels of the test images; non-zero = abnormal.
        scores: (n,) anomaly scores, higher = more anomalous. Both classes must be present.
        threshold: a test image is predicted abnormal when ``score > threshold``.
        images: optional, the n test images in the order of ``scores``, anything
            :func:`msde_jax.io.images.to_float` reads (paths, PIL images, arrays); only
            the 16 shown in the grid are read.
        names: optional, n display names for the grid (default: file names for paths, else
            the index).
        title: the report's title, also used in the figure titles.
        config: optional settings to record (JSON-serialisable after NumPy values and paths
            are converted; anything else is written as its ``str``).
        timings: optional ``{step: seconds}``.
        heatmaps: optional ``{test index: (image, map)}`` for at least the indices
            :func:`overlay_indices` ``(scores, labels=labels)`` picks: the image (H, W, 3)
            in [0, 1] as the embedder saw it and its (H, W) anomaly map
            (:func:`msde_jax.pipeline.evaluation.heatmaps`).
        volume_metrics: optional volume-level metrics
            (:func:`msde_jax.pipeline.volumes.volume_metrics`), written to ``metrics.json`` as
            ``volume_metrics`` and shown in ``report.md`` after the slice-level ones.
        maps_threshold: the threshold in the heatmaps' units where they are not the scores'
            (a fused detector's: :func:`msde_jax.pipeline.evaluation.maps_threshold`), marked on
            the overlays' colour bar instead of ``threshold``.
        normals_from_volumes: whether the normal test images are slices of volumes, whose
            false-positive interval (counting the slices as independent) is then said to be
            too narrow; default: whether ``volume_metrics`` are given.

    Returns:
        The metrics dict of :func:`msde_jax.core.metrics.evaluation_metrics`.

    Raises:
        ImportError: matplotlib cannot be imported (:data:`MATPLOTLIB_MISSING`).
        ValueError: mismatched lengths, non-finite scores, only one class present, a NaN
            threshold, or ``heatmaps`` without an index that ``overlay_indices`` picks.
    """
    positive, score_arr = check_scores(labels, scores)
    if positive.all() or not positive.any():
        raise ValueError(
            "the report needs both normal and abnormal test images, got "
            f"{int((~positive).sum())} normal and {int(positive.sum())} abnormal."
        )
    if images is not None and len(images) != score_arr.size:
        raise ValueError(f"got {len(images)} images for {score_arr.size} scores.")
    if names is not None and len(names) != score_arr.size:
        raise ValueError(f"got {len(names)} names for {score_arr.size} scores.")
    if heatmaps is not None:
        missing_heatmaps(overlay_indices(score_arr, labels=positive), heatmaps)
    require_matplotlib()  # fail early, before writing anything, when matplotlib is missing

    metrics = evaluation_metrics(positive, score_arr, threshold)
    detector = (config or {}).get("detector")  # evaluate()'s record of the detector, if any
    detector = detector if isinstance(detector, Mapping) else {}
    contamination = detector.get("contamination")
    rule = detector.get("threshold", "cross_fit")  # a fused detector's rule: cross_fit
    promise = None
    if isinstance(contamination, int | float) and 0 < contamination < 1 and rule in _PROMISED:
        promise = threshold_promise(metrics["fp"], metrics["n_normal"], contamination, rule=rule)
        if detector.get("mode") == "transductive" and not promise["kept"]:
            promise["text"] += (
                " Transductive scores also depend on the test batch they were shifted with (its "
                "share of abnormal images), unlike a new normal's scored alone."
            )
        if volume_metrics is not None if normals_from_volumes is None else normals_from_volumes:
            promise["text"] += (
                " These normals are slices of volumes, and the slices of one volume are not "
                "independent: the interval above, which assumes they are, is too narrow"
                + (
                    "; the volume-level metrics below count each volume once."
                    if volume_metrics
                    else "."
                )
            )
    record = {"title": title, "metrics": metrics, "config": config, "timings": timings}
    if promise is not None:
        record["threshold_promise"] = promise
    if volume_metrics is not None:
        record["volume_metrics"] = dict(volume_metrics)
    n, drawn = score_arr.size, literal(title)  # the figures' titles: a "$" is not math
    text = _markdown(
        title,
        metrics,
        config,
        timings,
        grid=0 if images is None else min(GRID_PER_ROW, n // 2),
        overlays=0 if heatmaps is None else min(OVERLAYS_PER_ROW, n // 2),
        volume_metrics=volume_metrics,
        promise=promise,
    )
    text = shown(text)  # a dataset folder's name that is not UTF-8

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))  # moved into out when whole
    try:
        with open(staging / "metrics.json", "w", encoding="utf-8") as f:
            json.dump(_jsonable(record), f, indent=2, allow_nan=False)
            f.write("\n")
        plot_roc(staging / "roc.png", positive, score_arr, metrics, drawn)
        plot_pr(staging / "pr.png", positive, score_arr, metrics, drawn)
        plot_histogram(staging / "histogram.png", positive, score_arr, metrics, drawn)
        if images is not None:
            plot_grid(staging / "grid.png", positive, score_arr, images, names, metrics, drawn)
        if heatmaps is not None:
            overlays = (heatmaps, metrics, drawn, maps_threshold)
            plot_overlays(staging / "overlays.png", positive, score_arr, *overlays)
        (staging / "report.md").write_text(text + "\n", encoding="utf-8")
        (staging / "report.html").write_text(_html(text, staging), encoding="utf-8")
        for name in FILES:  # an earlier report's, in a folder used again: none may be left over
            (out / name).unlink(missing_ok=True)
        for name in sorted(os.listdir(staging), key="metrics.json".__eq__):  # metrics last
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metrics
