"""The status page at /ui: server-rendered HTML (Jinja2, escaped), live by htmx polling, charts
drawn as SVG on the server; htmx and the stylesheet are served from the package, nothing from
a CDN. People sign in with an API key; the browser keeps only a session cookie (HttpOnly,
SameSite=Strict, Secure where the browser can send it back). Every form that changes state
carries the session's CSRF token and must come from this origin."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from llmq.api import ui
from llmq.api.http.errors import as_api_error
from llmq.settings import get_settings

HERE = Path(__file__).parent
COOKIE = "llmq_ui"
HTMX = "htmx-2.0.11.min.js"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/ui", include_in_schema=False)
static = StaticFiles(directory=HERE / "ui_static")
templates = Jinja2Templates(directory=HERE / "ui_templates")
templates.env.globals["htmx"] = HTMX


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure(request: Request) -> bool:
    """Secure cookies where the browser will send them back: over https, and to loopback
    (browsers count http://localhost and 127.0.0.1 as secure). Plain http to another host
    (no TLS in front of `llmq serve`) gets a cookie without the flag."""
    return request.url.scheme == "https" or _loopback(request.url.hostname)


def _html(request: Request, template: str, context: dict[str, Any], status: int = 200,
          who: ui.Viewer | None = None, token: str | None = None) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, {
        "who": who, "open_mode": get_settings().api_open, **context}, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    if token:
        response.set_cookie(COOKIE, token, max_age=int(get_settings().ui_session_hours * 3600),
                            path="/ui", secure=_secure(request), httponly=True,
                            samesite="strict")
    return response


def _error(request: Request, exc: Exception, who: ui.Viewer | None = None) -> HTMLResponse:
    if isinstance(exc, ui.InvalidQuery):
        status, message = 400, f"{exc.field}: {exc}"
    else:
        error = as_api_error(exc)
        status, message = error.status, error.message
    titles = {400: "Bad request", 404: "Not found", 503: "Unavailable"}
    return _html(request, "error.html", {"status": status, "title": titles.get(status, "Error"),
                                         "message": message}, status, who)


def _to_sign_in(request: Request) -> Response:
    target = "/ui/login?next=" + quote(request.url.path + (
        "?" + request.url.query if request.url.query else ""), safe="")
    if request.headers.get("hx-request"):  # a poll whose session ended: the page goes
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


async def _viewer(request: Request) -> tuple[ui.Viewer | None, str | None]:
    """The viewer of this request and, in open mode on a first visit, the new session's
    token (for its cookie)."""
    token = request.cookies.get(COOKIE)
    who = await run_in_threadpool(ui.viewer, token)
    if who is None and get_settings().api_open:
        token = await run_in_threadpool(ui.open_session)
        return await run_in_threadpool(ui.viewer, token), token
    return who, None


async def _page(request: Request, template: str,
                build: Callable[[ui.Viewer], dict[str, Any]]) -> Response:
    try:
        who, token = await _viewer(request)
    except Exception as exc:  # the database is down: say so, in the page
        return _error(request, exc)
    if who is None:
        return _to_sign_in(request)
    try:
        context = await run_in_threadpool(build, who)
    except Exception as exc:
        return _error(request, exc, who)
    return _html(request, template, context, who=who, token=token)


def _same_origin(request: Request) -> bool:
    """A form posted from this origin (Origin, else Referer; one of them is sent by every
    browser for a POST)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parts = urlsplit(source)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.url.netloc)


async def _action(request: Request, act: Callable[[ui.Viewer], Any], then: str) -> Response:
    """A button: signed in, same origin, the session's CSRF token; then back to ``then``."""
    try:
        who, _ = await _viewer(request)
    except Exception as exc:
        return _error(request, exc)
    if who is None:
        return _to_sign_in(request)
    form = await request.form()
    token = form.get("csrf")
    if not _same_origin(request) or not who.csrf_ok(token if isinstance(token, str) else None):
        return _html(request, "error.html", {"status": 403, "title": "Forbidden", "message":
                     "this form did not come from this page (its CSRF token or origin is "
                     "wrong): reload the page and try again"}, 403, who)
    try:
        await run_in_threadpool(act, who)
    except Exception as exc:
        return _error(request, exc, who)
    return RedirectResponse(then, status_code=303)


def _int(value: str | None, field: str) -> int:
    try:
        return int(value or "1")
    except ValueError:
        raise ui.InvalidQuery(field, f"{field} {value!r} is not a number") from None


# --- pages ----------------------------------------------------------------------------------

@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    return await _page(request, "overview.html", lambda who: {"o": ui.overview(who)})


@router.get("/batches", response_class=HTMLResponse)
async def batches(request: Request, state: str | None = None, page: str | None = None
                  ) -> Response:
    return await _page(request, "batches.html", lambda who: {
        "b": ui.batches(who, state or None, _int(page, "page"))})


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
async def batch(request: Request, batch_id: str) -> Response:
    return await _page(request, "batch.html", lambda who: {"b": ui.batch(who, batch_id)})


@router.post("/batches/{batch_id}/cancel")
async def cancel(request: Request, batch_id: str) -> Response:
    return await _action(request, lambda who: ui.cancel(who, batch_id),
                         f"/ui/batches/{quote(batch_id)}")


@router.post("/batches/{batch_id}/retry")
async def retry(request: Request, batch_id: str) -> Response:
    return await _action(request, lambda who: ui.retry(who, batch_id),
                         f"/ui/batches/{quote(batch_id)}")


@router.get("/pipelines", response_class=HTMLResponse)
async def pipelines(request: Request, page: str | None = None) -> Response:
    return await _page(request, "pipelines.html", lambda who: {
        "p": ui.pipelines(who, _int(page, "page"))})


@router.get("/pipelines/{run_id}", response_class=HTMLResponse)
async def pipeline(request: Request, run_id: str) -> Response:
    return await _page(request, "pipeline.html", lambda who: {"run": ui.pipeline(who, run_id)})


@router.get("/models", response_class=HTMLResponse)
async def models(request: Request) -> Response:
    return await _page(request, "models.html", lambda who: {"models": ui.models()})


@router.get("/health", response_class=HTMLResponse)
async def health(request: Request) -> Response:
    """The banner of every page: what the API cannot reach (as /readyz, which is public)."""
    checks = await run_in_threadpool(ui.health)
    return _html(request, "health.html", {"checks": checks})


# --- signing in and out ---------------------------------------------------------------------

def _next(target: str | None) -> str:
    """Where to go after signing in: a path of this page only (never another site)."""
    if target and target.startswith("/ui") and not target.startswith("//"):
        return target
    return "/ui"


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> Response:
    if get_settings().api_open:
        return RedirectResponse(_next(next), status_code=303)
    return _html(request, "login.html", {"next": _next(next), "message": None})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    target = _next(str(form.get("next") or ""))
    if not _same_origin(request):
        return _html(request, "login.html", {"next": target, "message":
                     "this form did not come from this page"}, 403)
    try:
        token = await run_in_threadpool(ui.sign_in, str(form.get("key") or ""))
    except ui.SignInRefused as exc:
        return _html(request, "login.html", {"next": target, "message": str(exc)}, 401)
    except Exception as exc:
        return _error(request, exc)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, token, max_age=int(get_settings().ui_session_hours * 3600),
                        path="/ui", secure=_secure(request), httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    response = await _action(request, ui.sign_out, "/ui/login")
    if response.status_code == 303:
        response.delete_cookie(COOKIE, path="/ui", secure=_secure(request), httponly=True,
                               samesite="strict")
    return response


@router.get("/{rest:path}", response_class=HTMLResponse)
async def unknown(request: Request, rest: str) -> Response:
    try:
        who, _ = await _viewer(request)
    except Exception:
        who = None
    return _html(request, "error.html", {"status": 404, "title": "Not found",
                                         "message": f"no page /ui/{rest}"}, 404, who)
