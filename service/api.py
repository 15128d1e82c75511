"""The HTTP API (FastAPI). Errors leave in one JSON shape, made in ``error_response``."""
from __future__ import annotations

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from detector.errors import AudioError, ClearanceError
from service.engine import Engine


class NotFound(ClearanceError):
    pass


def error_response(status: int, title: str, detail: str) -> JSONResponse:
    """The one error shape (RFC 9457 problem details)."""
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="Clearance", version="0.1.0",
                  description="Pre-publish check of generated music against a catalog of recordings.")

    @app.exception_handler(AudioError)
    async def audio_error(_request: Request, exc: AudioError):
        if exc.too_large:
            return error_response(413, "Audio too large", f"{exc.source}: {exc.reason}")
        return error_response(422, "Unreadable audio", f"{exc.source}: {exc.reason}")

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound):
        return error_response(404, "Not found", str(exc))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/v1/checks")
    async def create_check(audio: UploadFile = File(..., description="the generated output to check")):
        data = await audio.read()
        return await run_in_threadpool(engine.check, data, audio.filename or "upload")

    @app.get("/v1/checks/{check_id}")
    async def get_check(check_id: str):
        found = engine.store.get_check(check_id)
        if found is None:
            raise NotFound(f"no check with id '{check_id}'")
        return found[0]

    return app
