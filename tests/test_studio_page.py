"""`fedgai studio`, the designer's page: its API through FastAPI's test client (caps, token, names, the
loopback default, nothing written), and the whole page in a real headless Chromium on a trained test-size
generator (upload, sketch, blend slider, a non-image).

Screenshots land in the test's tmp folder, and also in $FEDGAI_STUDIO_SCREENSHOTS when it is set (that is how
docs/img/studio-page-*.png were made).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import headless_chromium
from fastapi.testclient import TestClient
from PIL import Image

from fedgai.cli import build_parser, main
from fedgai.studio_page.app import LOCAL_NAMES, Page, PageSettings, access_token, create_app
from fedgai.studio_page.uploads import download_name

PAGE = {"X-Fedgai-Studio": "page"}
INK = 230  # a pixel darker than this is a stroke (paper is 255)
# A test-size generator after 20 epochs draws faint strokes on white paper: some ink, mostly paper.
INK_RANGE = (0.005, 0.5)
SIZE = (96, 64)  # the test photo: wider than high, so a square sketch would be caught


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below `folder` with its size and modification time: what "nothing written" compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def ink_share(png: bytes) -> float:
    return float((np.asarray(Image.open(io.BytesIO(png)).convert("L")) < INK).mean())


@pytest.fixture(scope="module")
def studios(demo_root) -> list[Path]:
    return sorted(p for p in demo_root.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def trained(studios, tmp_path_factory) -> dict[str, Path]:
    """The studio's generator trained with train.public_styles (so it follows shared styles), the other demo
    studio's shared style file, and the same checkpoint as if trained without the option."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("studio-page")
    run, other = root / "run", root / "other"
    common = ["--profile", "test", "--set", "train.public_styles=true", "--set", "train.max_pairs=16"]
    assert main(["train-local", *common, "--studio", str(studios[0]), "--epochs", "20", "--out", str(run)]) == 0
    assert main(["train-local", *common, "--studio", str(studios[1]), "--epochs", "1", "--out", str(other)]) == 0
    styles = root / "styles"
    assert main(["share-style", "--model", str(other), "--out", str(styles / "other.style.json")]) == 0
    (styles / "notes.json").write_text('{"not": "a style"}')
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["train"]["public_styles"] = False
    torch.save(state, root / "plain.pt")
    return {"run": run, "styles": styles, "plain": root / "plain.pt", "root": root}


@pytest.fixture(scope="module")
def photo(studios, tmp_path_factory) -> Path:
    """A demo garment photo on a wider sheet of paper (96 x 64 px)."""
    garment = Image.open(sorted((studios[0] / "photos").iterdir())[1]).convert("RGB")
    sheet = Image.new("RGB", SIZE, "white")
    sheet.paste(garment, ((SIZE[0] - garment.width) // 2, 0))
    path = tmp_path_factory.mktemp("photos") / "look 12.png"
    sheet.save(path)
    return path


def client_for(model: Path, styles: Path | None = None, token: str | None = None, **settings) -> TestClient:
    page = Page.open(PageSettings(model=model, styles=styles, device="cpu", **settings))
    return TestClient(create_app(page, token, None if token else LOCAL_NAMES), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(trained) -> TestClient:
    return client_for(trained["run"], trained["styles"])


def upload(client: TestClient, data: bytes, name: str = "look.png"):
    return client.post("/api/sketches", params={"name": name}, content=data, headers=PAGE)


def test_listens_on_this_machine_only_unless_told_and_then_with_a_token():
    args = build_parser().parse_args(["studio", "--model", "run"])
    assert args.host == "127.0.0.1" and PageSettings(model=Path("run")).host == "127.0.0.1"
    assert access_token("127.0.0.1") is None and access_token("localhost") is None and access_token("::1") is None
    first, second = access_token("0.0.0.0"), access_token("192.168.1.20")
    assert first and second and first != second and len(first) >= 32


def test_the_command_has_help_and_refuses_a_missing_styles_folder(trained, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["studio", "--help"])
    assert exit_info.value.code == 0 and "127.0.0.1" in capsys.readouterr().out
    assert main(["studio", "--model", str(trained["run"]), "--styles", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_on_loopback_only_this_machines_names_are_answered(client):
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding


def test_other_hosts_need_the_token(trained):
    client = client_for(trained["run"], token="s3cret-token")
    assert client.get("/").status_code == 401 and client.get("/api/info").status_code == 401
    assert client.get("/", params={"token": "wrong"}).status_code == 401
    opened = client.get("/", params={"token": "s3cret-token"}, follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/info").status_code == 200  # the cookie from now on
    stranger = TestClient(client.app, base_url="http://127.0.0.1")
    assert stranger.get("/api/info", headers={"authorization": "Bearer s3cret-token"}).status_code == 200


def test_the_page_answers_while_the_model_is_busy(client):
    """Only sketching takes the model's lock: settings and results still load while a batch is being drawn."""
    page = client.app.state.page
    with page.model.lock:
        assert client.get("/api/info").status_code == 200 and client.get("/api/joining").status_code == 200
        assert client.get("/").status_code == 200


def test_uploads_must_come_from_the_page(client, photo):
    assert client.post("/api/sketches", content=photo.read_bytes()).status_code == 403


def test_a_photo_comes_back_as_a_sketch_the_same_as_fedgai_sketch(client, photo, trained, tmp_path):
    answer = upload(client, photo.read_bytes(), photo.name)
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert (info["width"], info["height"]) == SIZE and info["download"] == "look_12-sketch.png"
    png = client.get(f"/api/sketches/{info['id']}.png").content
    assert Image.open(io.BytesIO(png)).size == SIZE
    assert main(["sketch", "--model", str(trained["run"]), str(photo), "--out", str(tmp_path)]) == 0
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(Image.open(tmp_path / "look 12.png")))
    assert INK_RANGE[0] < ink_share(png) < INK_RANGE[1]


def test_the_blend_moves_towards_the_shared_style_and_refuses_what_is_not_one(client, photo):
    info = client.get("/api/info").json()["blend"]
    assert info["available"] and "public_styles" in info["reason"]
    usable = [s for s in info["styles"] if s["problem"] is None]
    refused = [s for s in info["styles"] if s["problem"] is not None]
    assert len(usable) == 1 and len(refused) == 1 and "not a fedgai style file" in refused[0]["problem"]
    photo_id = upload(client, photo.read_bytes()).json()["id"]
    own = client.get(f"/api/sketches/{photo_id}.png").content
    shared = client.get(f"/api/sketches/{photo_id}.png", params={"style": usable[0]["index"], "alpha": 1}).content
    assert own != shared
    assert client.get(f"/api/sketches/{photo_id}.png", params={"style": refused[0]["index"], "alpha": 1}).status_code \
        == 404
    assert client.get(f"/api/sketches/{photo_id}.png", params={"alpha": 2}).status_code == 422


def test_a_generator_trained_without_public_styles_says_so_instead_of_a_slider(trained, photo):
    client = client_for(trained["plain"], trained["styles"])
    blend = client.get("/api/info").json()["blend"]
    assert not blend["available"] and "does not follow shared styles" in blend["reason"]
    assert "train.public_styles" in blend["reason"]
    photo_id = upload(client, photo.read_bytes()).json()["id"]
    refused = client.get(f"/api/sketches/{photo_id}.png", params={"style": 1, "alpha": 0.5})
    assert refused.status_code == 409 and "does not follow" in refused.json()["error"]


def test_files_that_are_not_photos_get_a_clear_message_and_nothing_else_fails(client, photo):
    jpeg = io.BytesIO()
    Image.open(photo).convert("RGB").save(jpeg, "JPEG")
    cases = {"notes.txt": b"a text file, not a photo", "broken.jpg": jpeg.getvalue()[:200], "empty.png": b""}
    for name, data in cases.items():
        answer = upload(client, data, name)
        assert answer.status_code in (400, 415) and answer.json()["error"].startswith(name), answer.text
    assert upload(client, photo.read_bytes()).status_code == 200


def test_size_and_pixel_caps(trained):
    small = client_for(trained["run"], max_upload_mb=0.001)
    assert "more than this page takes" in upload(small, b"x" * 2000, "big.png").json()["error"]
    huge = io.BytesIO()
    Image.new("1", (8000, 6000)).save(huge, "PNG")  # 48 MP declared in a file of a few kB
    answer = upload(client_for(trained["run"]), huge.getvalue(), "huge.png")
    assert answer.status_code == 413 and "above the limit of 40 MP" in answer.json()["error"]


def test_uploaded_names_never_become_paths_and_nothing_is_written(client, photo, studios, trained):
    before = {folder: tree(folder) for folder in (studios[0], trained["root"])}
    ids = [upload(client, photo.read_bytes(), name).json()["id"]
           for name in ("../../etc/passwd", "..\\..\\win.png", "<img src=x>.png", "look 12.png", "look 12.png")]
    archive = zipfile.ZipFile(io.BytesIO(client.get("/api/sketches.zip", params={"ids": ",".join(ids)}).content))
    names = archive.namelist()
    assert names == ["passwd-sketch.png", "win-sketch.png", "_img_src_x_-sketch.png", "look_12-sketch.png",
                     "look_12-2-sketch.png"]
    assert download_name("..") == "photo-sketch.png"
    assert {folder: tree(folder) for folder in before} == before


def test_a_styled_studio_sketches_and_blends_and_its_export_sketches_on_the_page(studios, trained, photo, tmp_path):
    """model.generator styled: its checkpoint sketches as `fedgai sketch` does and blends (its decoder follows
    statistics by design); its export sketches the same drawing, without a blend."""
    from fedgai.config import profile
    from fedgai.trainer import StudioTrainer

    cfg = profile("test").with_overrides({"model.generator": "styled", "fed.mode": "local", "train.round_steps": 2,
                                          "train.head_steps": 1, "train.max_pairs": 6})
    trainer = StudioTrainer(cfg, studios[0], tmp_path / "styled")
    trainer.train_epochs(1)
    trainer.save_checkpoint()
    trainer.close()
    client = client_for(trainer.run_dir, trained["styles"])
    info = client.get("/api/info").json()
    assert info["model"].startswith("styled renderer") and info["blend"]["available"]
    assert "model.generator styled" in info["blend"]["reason"]
    usable = next(s["index"] for s in info["blend"]["styles"] if s["problem"] is None)
    photo_id = upload(client, photo.read_bytes()).json()["id"]
    own = client.get(f"/api/sketches/{photo_id}.png").content
    assert own != client.get(f"/api/sketches/{photo_id}.png", params={"style": usable, "alpha": 1}).content
    assert main(["sketch", "--model", str(trainer.run_dir), str(photo), "--out", str(tmp_path / "cli")]) == 0
    own_pixels = np.asarray(Image.open(io.BytesIO(own)), dtype=int)
    assert np.array_equal(own_pixels, np.asarray(Image.open(tmp_path / "cli" / "look 12.png")))

    assert main(["export", "--model", str(trainer.run_dir), "--out", str(tmp_path / "export")]) == 0
    exported = client_for(tmp_path / "export" / "sketcher.onnx", trained["styles"])
    assert not exported.get("/api/info").json()["blend"]["available"]
    photo_id = upload(exported, photo.read_bytes()).json()["id"]
    drawn = np.asarray(Image.open(io.BytesIO(exported.get(f"/api/sketches/{photo_id}.png").content)), dtype=int)
    assert drawn.shape == own_pixels.shape and np.abs(drawn - own_pixels).max() <= 1  # float noise, one grey level


@pytest.fixture(scope="module")
def workspace(trained, tmp_path_factory) -> Path:
    """The trained run as studio-01 of a simulator workspace: two federated rounds of five (the studio's
    records and the server's summaries; its first update dropped) and an evaluation against training alone."""
    workspace = tmp_path_factory.mktemp("workspace")
    run = workspace / "studios" / "studio-01"
    shutil.copytree(trained["run"], run)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"round": r, "loss_g": 1.0}) + "\n" for r in range(2)))
    summaries = workspace / "nvflare" / "server" / "simulate_job" / "fedgai"
    summaries.mkdir(parents=True)
    for rnd in range(2):
        summary = {"round": rnd, "total_rounds": 5, "aggregated": 2,
                   "contributions": {"studio-01": {"accepted": rnd == 1}}}
        (summaries / f"round-{rnd:03d}.json").write_text(json.dumps(summary))
    studio = json.loads((run / "metadata.json").read_text())["studio"]
    rows = [{"run": label, "studio": studio, "site": "studio-01", "metrics": {"FD-EffNetLite0": fd, "SSIM": ssim}}
            for label, fd, ssim in (("local-only", 100.0, 0.5), ("fedgai", 90.0, 0.45))]
    (workspace / "evaluation").mkdir()
    (workspace / "evaluation" / "metrics.json").write_text(json.dumps({"results": rows, "metrics": {}}))
    (workspace / "evaluation" / "report.html").write_text("<html><body>report</body></html>")
    return workspace


def test_what_joining_gave_shows_the_evaluation_and_rounds(workspace):
    client = client_for(workspace / "studios" / "studio-01")
    joining = client.get("/api/joining").json()
    assert [r["run"] for r in joining["evaluation"]["rows"]] == ["local-only", "fedgai"]
    fd, ssim = joining["evaluation"]["gains"][0]["changes"][:2]
    assert fd == {"name": "FD", "percent": -10.0, "better": True}
    assert ssim == {"name": "SSIM", "percent": -10.0, "better": False}
    assert joining["rounds"]["done"] == 2 and joining["rounds"]["total"] == 5
    assert [r["accepted"] for r in joining["rounds"]["records"]] == [False, True]
    assert client.get("/evaluation/report").text.startswith("<html>")


# ------------------------------------------------------------------------------------------------ browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained, workspace):
    """`fedgai studio` as a designer starts it, in its own process, on studio-01 of the workspace; yields the
    URL it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "fedgai.cli", "studio", "--model", str(workspace / "studios" / "studio-01"),
               "--styles", str(trained["styles"]), "--port", str(free_port()), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url, lines = None, []
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        lines.append(line)
        url = line.split("open ", 1)[1].strip() if line.startswith("open ") else None
    try:
        assert url is not None, "".join(lines)
        for _ in range(100):  # uvicorn binds just after the line is printed
            try:
                urllib.request.urlopen(url + "api/info", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    yield from headless_chromium("--window-size=1280,1500")


PIXELS_JS = """const img = arguments[0], c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
return Array.from(ctx.getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 0));"""


DROP_JS = """const c = document.createElement('canvas'); c.width = 80; c.height = 60;
const ctx = c.getContext('2d'); ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, 80, 60);
ctx.fillStyle = '#36c'; ctx.fillRect(25, 5, 30, 50);
c.toBlob((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
  document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));
});"""


def shoot(browser, tmp_path: Path, name: str) -> None:
    browser.save_screenshot(str(tmp_path / name))
    if os.environ.get("FEDGAI_STUDIO_SCREENSHOTS"):
        Path(os.environ["FEDGAI_STUDIO_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(os.environ["FEDGAI_STUDIO_SCREENSHOTS"]) / name)


def test_the_page_in_a_real_browser(served, browser, photo, studios, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    data_before = tree(studios[0])
    wait = WebDriverWait(browser, 30)
    browser.get(served)
    wait.until(lambda b: b.execute_script("return document.body.dataset.ready") == "true")
    assert "public_styles" in browser.find_element(By.ID, "blend-note").text
    assert browser.find_element(By.ID, "blend-controls").is_displayed()
    joining = browser.find_element(By.ID, "joining-section").text
    assert "fedgai compared with training alone (local-only)" in joining and "FD: -10 % (better)" in joining
    assert "round 2 of 5 done" in joining

    browser.find_element(By.ID, "files").send_keys(str(photo))
    sketch = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, ".card img.sketch[data-full='true']"))
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", sketch)
    assert tuple(size) == SIZE  # the photo's resolution and aspect ratio
    link = browser.find_element(By.CSS_SELECTOR, ".card a.download")
    assert link.get_attribute("download") == "look_12-sketch.png"
    with urllib.request.urlopen(link.get_attribute("href")) as answer:
        assert INK_RANGE[0] < ink_share(answer.read()) < INK_RANGE[1]
    own = np.array(browser.execute_script(PIXELS_JS, sketch))
    shoot(browser, tmp_path, "studio-page-sketch.png")

    slider = browser.find_element(By.ID, "alpha")
    slider.send_keys(Keys.END)  # the keyboard moves a range input like a drag: input, then change events
    wait.until(lambda b: sketch.get_attribute("data-alpha") == "1" and sketch.get_attribute("data-full") == "true"
               and b.execute_script("return document.body.dataset.drawing") == "false")
    assert browser.find_element(By.ID, "alpha-value").text == "100 %"
    blended = np.array(browser.execute_script(PIXELS_JS, sketch))
    assert blended.shape == own.shape and np.abs(blended - own).mean() > 0.05
    shoot(browser, tmp_path, "studio-page-blend.png")

    not_a_photo = tmp_path / "fabric-notes.jpg"
    not_a_photo.write_text("this is not a photo")
    browser.find_element(By.ID, "files").send_keys(f"{photo}\n{not_a_photo}")  # a batch with one bad file
    error = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#errors li"))
    assert "fabric-notes.jpg" in error.text and "not an image" in error.text
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".card img.sketch[data-full='true']")) == 2)
    shoot(browser, tmp_path, "studio-page-error.png")

    browser.execute_script(DROP_JS)  # a photo dropped on the drop zone, as a file manager drops one
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".card img.sketch[data-full='true']")) == 3)
    assert browser.find_element(By.CSS_SELECTOR, ".card .meta").text.startswith("dropped.png")
    assert tree(studios[0]) == data_before


@contextmanager
def page_in_thread(client: TestClient) -> Iterator[str]:
    """A test client's app served by uvicorn in this process (a second page without a second start-up)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_page_says_plainly_when_the_generator_does_not_follow_shared_styles(trained, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with page_in_thread(client_for(trained["plain"], trained["styles"])) as url:
        browser.get(url)
        WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.body.dataset.ready") == "true")
        note = browser.find_element(By.ID, "blend-note").text
        assert "does not follow shared styles" in note and "train.public_styles" in note
        assert not browser.find_element(By.ID, "blend-controls").is_displayed()
        assert not browser.find_element(By.ID, "alpha").is_displayed()
        shoot(browser, tmp_path, "studio-page-no-blend.png")
