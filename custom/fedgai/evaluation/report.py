"""What `fedgai evaluate` writes: a console table, metrics.csv, metrics.json and one self-contained report.html
(inline CSS, images and plots embedded as base64 PNG: it opens offline and can be mailed as one file)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import matplotlib
import torch
from PIL import Image

from fedgai.evaluation.evaluate import Evaluation, Gallery, StudioResult
from fedgai.evaluation.runs import Run

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

# name -> (what it measures, better direction)
METRICS: dict[str, tuple[str, str]] = {
    "FD-EffNetLite0": ("Fréchet distance of EfficientNet-Lite0 features, generated vs real test sketches "
                       "(not FID: another network)", "lower"),
    "KD-EffNetLite0": ("kernel (KID-style polynomial MMD) distance of the same features", "lower"),
    "SSIM": ("structural similarity to the paired real sketch", "higher"),
    "PSNR": ("peak signal-to-noise ratio to the paired real sketch, dB", "higher"),
    "ink_IoU": ("intersection-over-union of stroke pixels with the real sketch", "higher"),
    "ink_chamfer_px": ("mean distance from each stroke to the nearest stroke of the other drawing, px", "lower"),
    "style_acc": ("share of generated sketches the studio-style classifier assigns to their own studio", "higher"),
    "style_acc_real": ("the same on the real test sketches: the classifier's ceiling", "higher"),
    "FD-Style": ("Fréchet distance of the studio-style classifier's probabilities over the studios, generated vs "
                 "real test sketches: the studio's own style, not only its argmax", "lower"),
    "FD-Style-reject": ("FD-Style with two more classes, \"not a line sketch\" (noise, blobs, blank pages) and "
                        "\"another line style\": noise scores far from every studio (about 4), a line sketch in "
                        "another style about 1-2", "lower"),
    "not_sketch_share": ("share of generated sketches filed as \"not a line sketch\" (an untrained renderer: "
                         "0.75-1)", "lower"),
    "Gram_dist": ("per test pair, squared difference of the run encoder's Gram matrices (generated vs real "
                  "sketch) at the generator's taps, relative to the real one's energy; mean over taps and pairs",
                  "lower"),
    "FID": ("Fréchet Inception distance (Inception-v3 features)", "lower"),
    "KID": ("kernel Inception distance", "lower"),
    "CLIP_photo_sketch": ("CLIP cosine similarity, photo vs generated sketch", "higher"),
}
TABLE_COLUMNS = (("FD", "FD-EffNetLite0", "{:.2f}"), ("KD", "KD-EffNetLite0", "{:.4f}"), ("SSIM", "SSIM", "{:.3f}"),
                 ("PSNR", "PSNR", "{:.2f}"), ("ink IoU", "ink_IoU", "{:.3f}"), ("style acc", "style_acc", "{:.2f}"),
                 ("FD-Style", "FD-Style", "{:.3f}"), ("FD-Style-rej", "FD-Style-reject", "{:.3f}"),
                 ("Gram", "Gram_dist", "{:.4f}"))
CURVE_KEYS = ("loss_g", "loss_d", "quality_l1", "quality_gram")


def fmt(value: object, pattern: str = "{:.4g}") -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return pattern.format(value) if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


BYTE_UNITS = ("B", "kB", "MB", "GB", "TB")


def fmt_bytes(count: int) -> str:
    """A byte count as people read it (SI units: 9.6 MB, not 9.596e+06)."""
    exponent = 0
    while exponent < len(BYTE_UNITS) - 1 and count >= 1000 ** (exponent + 1):
        exponent += 1
    if exponent == 0:
        return f"{count} B"
    value = count / 1000**exponent
    return f"{value:.3g} {BYTE_UNITS[exponent]}" if value < 100 else f"{value:.0f} {BYTE_UNITS[exponent]}"


def table_rows(results: Sequence[StudioResult]) -> list[list[str]]:
    return [[r.run, r.studio, f"{r.size_group} ({r.n_pairs})", fmt(r.metrics["n_test"], "{:.0f}"),
             *(fmt(r.metrics.get(key), pattern) for _, key, pattern in TABLE_COLUMNS)] for r in results]


def text_table(results: Sequence[StudioResult]) -> str:
    """The per-studio table printed to the console."""
    header = ["run", "studio", "size (pairs)", "n test", *(name for name, _, _ in TABLE_COLUMNS)]
    rows = [header, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def metric_names(results: Iterable[StudioResult]) -> list[str]:
    """Every metric present, known ones first in report order."""
    present = dict.fromkeys(k for r in results for k in r.metrics)
    return [k for k in ["n_test", *METRICS] if k in present] + [k for k in present if k not in METRICS and
                                                               k != "n_test"]


def group_means(results: Sequence[StudioResult]) -> list[dict[str, object]]:
    """Per run and size group: the mean of every numeric metric over its studios."""
    out = []
    for run in dict.fromkeys(r.run for r in results):
        for group in ("small", "large"):
            rows = [r for r in results if r.run == run and r.size_group == group]
            if not rows:
                continue
            means: dict[str, object] = {"run": run, "size_group": group, "studios": len(rows)}
            for key in metric_names(rows):
                values = [r.metrics[key] for r in rows if isinstance(r.metrics.get(key), int | float)]
                means[key] = sum(values) / len(values) if values else "unavailable"
            out.append(means)
    return out


def write_csv(path: Path, results: Sequence[StudioResult]) -> None:
    names = metric_names(results)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "studio", "site", "size_group", "n_pairs", *names, "upload_bytes",
                         "download_bytes", "dp_epsilon"])
        for r in results:
            writer.writerow([r.run, r.studio, r.site, r.size_group, r.n_pairs, *(r.metrics.get(k, "") for k in names),
                             r.upload_bytes, r.download_bytes, "" if r.dp_epsilon is None else r.dp_epsilon])


def run_info(run: Run) -> dict[str, object]:
    return {"label": run.label, "folders": [str(r) for r in run.roots], "mode": run.mode,
            "studios": [s.studio for s in run.studios], "rounds": len(run.rounds),
            "encoder": run.studios[0].metadata.get("encoder")}


def write_json(path: Path, evaluation: Evaluation) -> None:
    data = {"runs": [run_info(r) for r in evaluation.runs], "results": [asdict(r) for r in evaluation.results],
            "group_means": group_means(evaluation.results), "notes": evaluation.notes,
            "metrics": {k: {"meaning": m, "better": b} for k, (m, b) in METRICS.items()}}
    path.write_text(json.dumps(finite_json(data), indent=2) + "\n")


def finite_json(value: object) -> object:
    """inf/nan (PSNR of an exact copy) are not JSON: they become the strings "inf"/"nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------- HTML
def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_uri(image: torch.Tensor) -> str:
    """A [-1, 1] C x H x W tensor as an embedded PNG."""
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    mode_array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(mode_array).save(buffer, format="PNG")
    return png_data_uri(buffer.getvalue())


def figure_uri(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return png_data_uri(buffer.getvalue())


def curves_uri(run: Run) -> str | None:
    """Training curves of every studio (per epoch) and, for federated runs, the global update per round."""
    histories = {s.studio: s.history() for s in run.studios}
    keys = [k for k in CURVE_KEYS if any(k in h for hist in histories.values() for h in hist)]
    keys += sorted({k for hist in histories.values() for h in hist for k in h if k.startswith("val_")})
    norms = [(r["round"], r["global_update_norm"]) for r in run.rounds if "global_update_norm" in r]
    panels = len(keys) + bool(norms)
    if not panels:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(3.4 * panels, 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        for studio, hist in histories.items():
            points = [(h["epoch"], h[key]) for h in hist if isinstance(h.get(key), int | float)]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=studio)
        ax.set(title=key, xlabel="epoch")
    if norms:
        ax = axes[0][-1]
        ax.plot(*zip(*norms, strict=True), marker="o", color="black")
        ax.set(title="global D update norm", xlabel="round")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(run.label, y=1.04)
    return figure_uri(fig)


def html_table(header: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def gallery_html(studio: str, gallery: Gallery) -> str:
    labels = ["photo", *gallery.fakes, "real sketch"]
    rows = []
    for i, stem in enumerate(gallery.stems):
        images = [gallery.photos[i], *(f[i] for f in gallery.fakes.values()), gallery.reals[i]]
        cells = "".join(f'<td><img src="{image_uri(img)}" alt="{html.escape(f"{stem}: {label}")}"></td>'
                        for img, label in zip(images, labels, strict=True))
        rows.append(f"<tr><th>{html.escape(stem)}</th>{cells}</tr>")
    head = "".join(f"<th>{html.escape(label)}</th>" for label in ["test pair", *labels])
    return (f'<h3>{html.escape(studio)}</h3><table class="gallery"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2) { text-align: left; }
table.gallery td { padding: 2px; } table.gallery img { width: 128px; height: 128px; image-rendering: pixelated; }
.note { color: #555; font-size: 0.9em; } img.curves { max-width: 100%; display: block; margin-bottom: 1em; }
"""


def write_html(path: Path, evaluation: Evaluation) -> None:
    results = evaluation.results
    names = [k for k in metric_names(results) if k != "n_test"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fedgai evaluation</title>"
             f"<style>{CSS}</style></head><body><h1>fedgai evaluation: held-out test pairs</h1>"]
    parts.append("<h2>Runs</h2>" + html_table(
        ["label", "mode", "folder", "studios", "rounds", "encoder"],
        ([i["label"], i["mode"], ", ".join(i["folders"]), len(i["studios"]), i["rounds"], i["encoder"]]
         for i in map(run_info, evaluation.runs))))
    parts.append("<h2>Metrics per studio</h2>" + html_table(
        ["run", "studio", "size (pairs)", "n test", *names],
        ([r.run, r.studio, f"{r.size_group} ({r.n_pairs})", r.metrics["n_test"], *(r.metrics.get(k) for k in names)]
         for r in results), "metrics"))
    means = group_means(results)
    parts.append("<h2>Means per size group</h2>" + html_table(
        ["run", "size group", "studios", *names], ([m["run"], m["size_group"], m["studios"], *(m.get(k) for k in names)]
                                                   for m in means)))
    parts.append("<h2>Traffic and privacy</h2>" + html_table(
        ["run", "studio", "site", "uploaded", "downloaded", "DP epsilon"],
        ([r.run, r.studio, r.site, fmt_bytes(r.upload_bytes), fmt_bytes(r.download_bytes), r.dp_epsilon]
         for r in results)))
    parts.append("<h2>Galleries (test pairs)</h2>")
    parts += [gallery_html(studio, g) for studio, g in evaluation.galleries.items()]
    parts.append("<h2>Training curves</h2>")
    for run in evaluation.runs:
        uri = curves_uri(run)
        parts.append(f'<img class="curves" src="{uri}" alt="training curves of {html.escape(run.label)}">' if uri
                     else f"<p class='note'>{html.escape(run.label)}: no training log found</p>")
    parts.append("<h2>Metrics and notes</h2>" + html_table(
        ["metric", "meaning", "better"], ([k, m, b] for k, (m, b) in METRICS.items())))
    parts.append("<ul class='note'>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                               for k, v in evaluation.notes.items()) + "</ul></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def write_outputs(evaluation: Evaluation, out: Path) -> dict[str, Path]:
    """metrics.csv, metrics.json and report.html in `out` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "metrics.csv", "json": out / "metrics.json", "html": out / "report.html"}
    write_csv(paths["csv"], evaluation.results)
    write_json(paths["json"], evaluation)
    write_html(paths["html"], evaluation)
    return paths
