"""The HTTP API (FastAPI): ``create_app`` puts together the routes of ``/v1/checks``
(``checks_api``) and ``/v1/tracks`` (``catalog_api``), the operational endpoints, the body
caps (``uploads``), the work pools (``pool``), the metrics and the one error shape
(``problems``).
"""
from __future__ import annotations

from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from detector.errors import ClearanceError
from index.search import LAYERS
from service import problems
from service.catalog_api import TRACKS, catalog_router
from service.checks_api import CHECKS, checks_router
from service.dashboard import create_dashboard
from service.engine import Engine
from service.metrics import Metrics
from service.pool import WorkPool
from service.uploads import FORM_OVERHEAD, BodyLimit


def warm(engine: Engine) -> None:
    """Load the model, calibration, policy and every layer's index (opened where it was saved
    with the published vectors, else built from the database), so the first check is fast."""
    _ = engine.embedder, engine.calibration, engine.policy
    for layer in LAYERS:
        engine.catalog.searcher.index(layer.name)


def create_app(engine: Engine) -> FastAPI:
    """The service over ``engine``. Starting it loads everything a check needs (before the
    server accepts connections); a model or index that cannot be loaded stops the start."""
    settings = engine.settings
    checks_pool = WorkPool("checks", settings.check_workers, settings.check_queue)
    catalog_pool = WorkPool("catalog", 1, settings.catalog_queue)
    metrics = Metrics(engine, [checks_pool, catalog_pool])

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await run_in_threadpool(warm, engine)
        yield
        checks_pool.close()
        catalog_pool.close()
        engine.release()

    app = FastAPI(title="Clearance", version="0.1.0", lifespan=lifespan,
                  description="Pre-publish check of generated music against a catalog of recordings. "
                              "Send API keys as `Authorization: Bearer KEY`.")
    app.state.engine = engine
    problems.install(app)
    app.add_middleware(BodyLimit, upload_paths=frozenset({CHECKS, TRACKS}),
                       upload_bytes=int(settings.max_upload_mb * 1e6) + FORM_OVERHEAD,
                       other_bytes=settings.max_request_kb * 1024)
    app.include_router(checks_router(engine, checks_pool, metrics))
    app.include_router(catalog_router(engine, catalog_pool))

    @app.get("/healthz", tags=["operations"], summary="The process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="The database answers and the index is loaded")
    def readyz() -> JSONResponse:
        try:
            with engine.store.engine.connect() as c:
                c.execute(sa.text("SELECT 1"))
            vectors = engine.catalog.searcher.index("embedding")   # reloads a newly published index, or fails
        except (ClearanceError, sa.exc.SQLAlchemyError) as exc:
            return problems.problem(503, f"not ready: {exc}")
        return JSONResponse({"status": "ready", "model": engine.embedder.version, "tracks": len(vectors.tracks()),
                             "vectors": vectors.size})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)")
    def metrics_text() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.mount("/review", create_dashboard(engine))
    return app
