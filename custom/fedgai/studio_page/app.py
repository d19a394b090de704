"""The studio page's web app (FastAPI, served by uvicorn) and its access rules.

Safe by default: it listens on 127.0.0.1 and then answers only requests addressed to this machine's own name
(a web site that points its domain at 127.0.0.1 is turned away). Listening on any other address needs a token,
generated at start and printed once; the browser keeps it in a same-site cookie. Uploads must carry the page's
own header, so another site cannot make a visitor's browser post to it.
"""

from __future__ import annotations

import io
import ipaddress
import secrets
import socket
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from fedgai.edge.framing import MULTIPLE
from fedgai.studio_page import DEFAULT_PORT, MAX_UPLOAD_MB
from fedgai.studio_page.engine import PageModel, StyleChoice
from fedgai.studio_page.joining import REPORT_HTML, Places, find_places, joining_view
from fedgai.studio_page.uploads import (
    KEEP_PHOTOS,
    KEEP_SKETCHES,
    Memory,
    PageError,
    Photo,
    decode_upload,
    new_id,
    too_big,
)

STATIC = Path(__file__).parent / "static"
LOCAL_NAMES = ["127.0.0.1", "localhost"]
TOKEN_COOKIE = "fedgai_studio_token"
PAGE_HEADER = "x-fedgai-studio"  # sent by the page's own script; a cross-site form or fetch cannot add it unasked
OWN_STYLE = -1
PREVIEW_SIDE = 320  # longer side of the sketches re-drawn while the slider moves
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'; base-uri 'none'"
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


@dataclass
class PageSettings:
    """What `fedgai studio` was started with."""

    model: Path
    styles: Path | None = None
    evaluation: Path | None = None
    workspace: Path | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    size: int | None = None
    max_upload_mb: float = MAX_UPLOAD_MB
    device: str = "auto"

    def check(self) -> None:
        """Mistakes in the options, before the model loads."""
        if self.styles is not None and not self.styles.is_dir():
            raise FileNotFoundError(f"--styles {self.styles} is not a folder (it should hold *.style.json files "
                                    "written by `fedgai share-style`)")
        if self.size is not None and self.size < MULTIPLE:
            raise ValueError(f"--size must be at least {MULTIPLE} px, got {self.size}")
        if self.max_upload_mb <= 0:
            raise ValueError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")


@dataclass
class Page:
    """What the app serves from: the model (loaded once), the shared styles, where the studio's results are,
    and the in-memory photos and sketches."""

    model: PageModel
    styles: list[StyleChoice]
    places: Places
    max_bytes: int
    size: int | None = None
    styles_folder: Path | None = None
    photos: Memory[str, Photo] = field(default_factory=lambda: Memory(KEEP_PHOTOS))
    sketches: Memory[tuple, bytes] = field(default_factory=lambda: Memory(KEEP_SKETCHES))

    @classmethod
    def open(cls, settings: PageSettings) -> Page:
        settings.check()
        model = PageModel(settings.model, settings.device)
        return cls(model, model.load_styles(settings.styles),
                   find_places(settings.model, settings.evaluation, settings.workspace),
                   int(settings.max_upload_mb * 1_000_000), settings.size, settings.styles)

    def info(self) -> dict[str, Any]:
        support = self.model.blend_support()
        styles = [{"index": i, "label": s.label, "problem": s.problem} for i, s in enumerate(self.styles)]
        return {"model": self.model.describe(), "studio": self.model.studio_name,
                "blend": {"available": support.available, "reason": support.reason, "styles": styles,
                          "folder": None if self.styles_folder is None else str(self.styles_folder)},
                "limits": {"max_mb": self.max_bytes / 1e6, "max_megapixels": self.model.max_pixels / 1e6},
                "preview": PREVIEW_SIDE}

    def joining(self) -> dict[str, Any]:
        """Read on every request: an evaluation finished while the page is open shows on reload."""
        cfg = self.model.config
        return joining_view(self.places, self.model.studio_name, cfg.fed.rounds if cfg is not None else None)

    def photo(self, photo_id: str) -> Photo:
        photo = self.photos.get(photo_id)
        if photo is None:
            raise PageError(f"this photo is no longer held by the page (it keeps the last {KEEP_PHOTOS}): drop it "
                              "again", status=404)
        return photo

    def style_for(self, index: int, alpha: float) -> StyleChoice | None:
        """The shared style a request names by its index in the page's list (never by a file name)."""
        if index == OWN_STYLE or alpha == 0:
            return None
        if not self.model.blend_support().available:
            raise PageError(self.model.blend_support().reason, status=409)
        if not 0 <= index < len(self.styles) or self.styles[index].style is None:
            raise PageError(f"no usable shared style number {index}", status=404)
        return self.styles[index]

    def render(self, photo_id: str, index: int, alpha: float, size: int | None) -> bytes:
        """The sketch as PNG bytes, from memory when this photo, style, alpha and size were drawn before."""
        photo = self.photo(photo_id)
        choice = self.style_for(index, alpha)
        key = (photo_id, OWN_STYLE if choice is None else index, round(alpha, 3) if choice else 0.0, size)
        cached = self.sketches.get(key)
        if cached is not None:
            return cached
        sketch = self.model.sketch(photo.image, size, None if choice is None else choice.style, alpha)
        png = png_bytes(sketch)
        self.sketches.put(key, png)
        return png


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost": only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str) -> str | None:
    """A fresh token when other hosts can reach the page; none on loopback."""
    return None if is_loopback(host) else secrets.token_urlsafe(24)


async def read_capped(request: Request, max_bytes: int, name: str) -> bytes:
    """The request body, refused as soon as it passes `max_bytes` (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big(int(declared), max_bytes, name)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_big(len(body), max_bytes, name)
    return bytes(body)


def unique_names(photos: list[Photo]) -> list[str]:
    """Download names, numbered where two photos share one (zip entries never collide or carry a path)."""
    seen: dict[str, int] = {}
    names = []
    for photo in photos:
        name = photo.download
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else name.replace("-sketch.png", f"-{seen[name]}-sketch.png"))
    return names


Handler = Callable[[Request], Awaitable[Response]]


def guard(token: str | None) -> Callable[[Request, Handler], Awaitable[Response]]:
    """The middleware that applies the token (when there is one) and the page header on uploads."""

    async def check(request: Request, call_next: Handler) -> Response:
        if token is not None and not has_token(request, token):
            if request.url.path == "/" and secrets.compare_digest(request.query_params.get("token", ""), token):
                response: Response = RedirectResponse("/", status_code=303)  # the token leaves the address bar
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            return PlainTextResponse("This page needs its token: open the link that `fedgai studio` printed when it "
                                     "started.", status_code=401)
        if request.method not in ("GET", "HEAD") and request.headers.get(PAGE_HEADER) != "page":
            return PlainTextResponse("uploads come from the studio page only", status_code=403)
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return check


def has_token(request: Request, token: str) -> bool:
    given = request.cookies.get(TOKEN_COOKIE) or request.headers.get("authorization", "").removeprefix("Bearer ")
    return secrets.compare_digest(given.encode(), token.encode())


def create_app(page: Page, token: str | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The page's app. `allowed_hosts`: the Host names it answers (LOCAL_NAMES on loopback), None = any."""
    app = FastAPI(title="fedgai studio page", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.page = page
    app.middleware("http")(guard(token))
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(PageError)
    async def refused(_: Request, err: PageError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return page.info()

    @app.get("/api/joining")
    def joining() -> dict[str, Any]:
        return page.joining()

    @app.get("/evaluation/report")
    def report() -> Response:
        path = page.places.evaluation / REPORT_HTML if page.places.evaluation is not None else None
        if path is None or not path.is_file():
            raise PageError("no evaluation report next to this model", status=404)
        return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})

    @app.post("/api/sketches")
    async def upload(request: Request, name: str = "photo") -> dict[str, Any]:
        data = await read_capped(request, page.max_bytes, name)
        photo = await run_in_threadpool(decode_upload, data, name, page.model.max_pixels, page.size)
        photo_id = new_id()
        page.photos.put(photo_id, photo)
        await run_in_threadpool(page.render, photo_id, OWN_STYLE, 0.0, None)
        return {"id": photo_id, "name": photo.name, "download": photo.download, "width": photo.image.width,
                "height": photo.image.height}

    @app.get("/api/sketches/{photo_id}.png")
    def sketch(photo_id: str, style: int = OWN_STYLE, alpha: Annotated[float, Query(ge=0, le=1)] = 0.0,
               size: Annotated[int | None, Query(ge=MULTIPLE)] = None) -> Response:
        png = page.render(photo_id, style, alpha, size)
        name = page.photo(photo_id).download
        return Response(png, media_type="image/png", headers={"Content-Disposition": f'inline; filename="{name}"'})

    @app.get("/api/sketches.zip")
    def sketches_zip(ids: str, style: int = OWN_STYLE, alpha: Annotated[float, Query(ge=0, le=1)] = 0.0) -> Response:
        wanted = [i for i in ids.split(",") if i][:KEEP_PHOTOS]
        photos = [page.photo(i) for i in wanted]
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
            for photo_id, name in zip(wanted, unique_names(photos), strict=True):
                archive.writestr(name, page.render(photo_id, style, alpha, None))
        return Response(buffer.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="sketches.zip"'})

    return app


def page_url(host: str, port: int, token: str | None) -> str:
    """The address to open: this machine's name when listening on every interface."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(settings: PageSettings) -> None:
    """Load the model, print where the page is (and its token, once), and serve until Ctrl+C."""
    import uvicorn

    page = Page.open(settings)
    token = access_token(settings.host)
    app = create_app(page, token, None if token else [*LOCAL_NAMES, settings.host, f"[{settings.host}]"])
    print(f"studio page for {page.model.describe()}")
    print(f"open {page_url(settings.host, settings.port, token)}")
    if token:
        print("other hosts can reach this page: anyone with this link (it holds the token, printed only now) can "
              "use it; Ctrl+C stops it")
    else:
        print("only this machine can reach it (--host to change that); Ctrl+C stops it")
    usable = sum(s.style is not None for s in page.styles)
    print(f"shared styles: {usable} usable of {len(page.styles)}; evaluation: {page.places.evaluation or 'none'}",
          flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", server_header=False)
