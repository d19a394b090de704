"""The studio page's speed as a designer feels it: time to the first sketch of a 1024 px photo, and per photo in a
batch, with the full generator, the compressed (edge) generator and its ONNX export. Results:
benchmarks/results/studio_page.json and docs/benchmarks.md.

A demo studio's generator is trained briefly with the quick profile's architecture (EfficientNet-Lite0
encoder, `train.public_styles` so the blend can be timed too), distilled (`fedgai compress`) and exported
(`fedgai export`): sketch quality does not matter here, only the cost, which training does not change. Each
model is loaded into the page once (`fedgai studio`'s start-up, timed apart); then every photo goes through the
page's own HTTP API in process (FastAPI's test client) as the page sends it: the upload, its decode and framing,
the sketch, and the PNG the browser shows.

    .venv/bin/python benchmarks/studio_page.py [--threads 2] [--photos 8] [--side 1024] [--repeats 3]

Page start and first sketch are the median over --repeats fresh pages; the batch figures are from all of them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from PIL import Image

from fedgai.cli import main as fedgai
from fedgai.data import make_demo
from fedgai.studio_page.app import LOCAL_NAMES, Page, PageSettings, create_app

RESULTS = Path(__file__).parent / "results" / "studio_page.json"
PAGE = {"X-Fedgai-Studio": "page"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    p.add_argument("--photos", type=int, default=8, help="photos in the timed batch")
    p.add_argument("--side", type=int, default=1024, help="longer side of the photos in px (4:3 landscape)")
    p.add_argument("--repeats", type=int, default=3, help="fresh page starts per model (median reported)")
    p.add_argument("--work", type=Path, help="folder for the studio and models (default: a temporary one)")
    return p.parse_args()


def prepare_models(work: Path) -> dict[str, Path]:
    """Full generator (run folder), its compressed checkpoint, and both as ONNX sketchers."""
    studio = make_demo(work / "data", studios=1, seed=0, progress=False)[0]
    run = work / "run"
    train = ["train-local", "--profile", "quick", "--set", "train.public_styles=true", "--set", "train.max_pairs=16",
             "--set", "train.unpaired_batch=0", "--studio", str(studio), "--epochs", "1", "--out", str(run)]
    compressed = run / "checkpoints" / "compressed.pt"
    for command in (train, ["compress", "--model", str(run), "--out", str(compressed), "--epochs", "1"],
                    ["export", "--model", str(run), "--out", str(work / "export-full")],
                    ["export", "--model", str(compressed), "--out", str(work / "export")]):
        if fedgai(command) != 0:
            raise SystemExit(f"fedgai {' '.join(command)} failed")
    fedgai(["share-style", "--model", str(run), "--out", str(work / "styles" / "own.style.json")])
    return {"full generator": run, "full, ONNX Runtime": work / "export-full" / "sketcher.onnx",
            "compressed generator": compressed, "compressed, ONNX Runtime": work / "export" / "sketcher.onnx"}


def photos(studio_photos: Path, count: int, side: int) -> list[bytes]:
    """`count` distinct garment photos as JPEG, `side` x 3/4 `side`: the garment on a landscape sheet."""
    out = []
    for path in sorted(studio_photos.iterdir())[:count]:
        garment = Image.open(path).convert("RGB").resize((side * 3 // 4, side * 3 // 4), Image.Resampling.LANCZOS)
        sheet = Image.new("RGB", (side, side * 3 // 4), "white")
        sheet.paste(garment, (side // 8, 0))
        buffer = io.BytesIO()
        sheet.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def sketch_once(client: TestClient, data: bytes, name: str) -> float:
    """Seconds from the upload to the sketch's PNG in hand, as the page does it (POST, then GET)."""
    start = time.perf_counter()
    answer = client.post("/api/sketches", params={"name": name}, content=data, headers=PAGE)
    answer.raise_for_status()
    client.get(f"/api/sketches/{answer.json()['id']}.png").raise_for_status()
    return time.perf_counter() - start


def blend_times(client: TestClient, data: bytes) -> dict[str, float]:
    """One slider move on one sketch: the preview drawn while it moves, and the full size when it stops."""
    photo_id = client.post("/api/sketches", params={"name": "b.jpg"}, content=data, headers=PAGE).json()["id"]
    out = {}
    for label, extra in (("blend preview (320 px)", {"size": 320}), ("blend full size", {})):
        start = time.perf_counter()
        client.get(f"/api/sketches/{photo_id}.png", params={"style": 0, "alpha": 0.5, **extra}).raise_for_status()
        out[label] = time.perf_counter() - start
    return out


def measure_once(model: Path, styles: Path, batch: list[bytes]) -> dict[str, Any]:
    """One fresh page: its start, its first sketch, then the batch (and one slider move where it blends)."""
    start = time.perf_counter()
    page = Page.open(PageSettings(model=model, styles=styles, device="cpu"))
    started = time.perf_counter() - start
    client = TestClient(create_app(page, None, LOCAL_NAMES), base_url="http://127.0.0.1")
    first = sketch_once(client, batch[0], "first.jpg")
    per_photo = [sketch_once(client, data, f"p{i}.jpg") for i, data in enumerate(batch)]
    blend = blend_times(client, batch[0]) if page.model.blend_support().available else {}
    return {"start": started, "first": first, "per_photo": per_photo, "blend": blend}


def measure(model: Path, styles: Path, batch: list[bytes], repeats: int) -> dict[str, Any]:
    runs = [measure_once(model, styles, batch) for _ in range(repeats)]
    per_photo = [t for r in runs for t in r["per_photo"]]
    result = {"page start s": statistics.median(r["start"] for r in runs),
              "first sketch s": statistics.median(r["first"] for r in runs),
              "first sketch all s": [r["first"] for r in runs],
              "batch per photo s": statistics.mean(per_photo), "batch per photo min s": min(per_photo),
              "batch per photo max s": max(per_photo), "blend": bool(runs[0]["blend"])}
    for key in runs[0]["blend"]:
        result[key] = statistics.median(r["blend"][key] for r in runs)
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        models = prepare_models(work)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise (after fedgai's set-up)
        studio_photos = next((work / "data").iterdir()) / "photos"
        batch = photos(studio_photos, args.photos, args.side)
        results = {name: measure(path, work / "styles", batch, args.repeats) for name, path in models.items()}
    load = os.getloadavg()
    record = {"side": args.side, "height": args.side * 3 // 4, "photos": args.photos, "threads": args.threads,
              "repeats": args.repeats,
              "load_average_1_5_15": [round(v, 2) for v in load], "cpus": os.cpu_count(), "models": results}
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{args.side} x {args.side * 3 // 4} px photos, {args.threads} threads, load average {load[0]:.1f}")
    print("| model | page start s | first sketch s | batch per photo s | blend preview s | blend full s |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        blend = (f"{r['blend preview (320 px)']:.2f} | {r['blend full size']:.2f}" if r["blend"] else "- | -")
        print(f"| {name} | {r['page start s']:.2f} | {r['first sketch s']:.2f} | {r['batch per photo s']:.2f} | "
              f"{blend} |")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
