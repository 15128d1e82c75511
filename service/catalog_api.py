"""``/v1/tracks`` and ``/v1/works``: catalog administration over HTTP, through the same code as
the CLI's ``index``, ``rights``, ``remove``, ``tracks``, ``work`` and ``works``.

Uploaded reference recordings are kept in ``HOME/references/<sha256><suffix>``: tracks point
at their audio (``source_path``, shown as ``source_file``: its name), which reviewers later hear
excerpts of.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from detector.audio import AUDIO_SUFFIXES
from detector.errors import AudioError, Conflict, NotFound
from detector.policy import Rights, WorkInfo, WorkRights
from index.catalog import Catalog, ManifestEntry
from index.reviews import Review
from index.store import Track, valid_work_id, work_dict
from service.auth import Principal, Role, require
from service.engine import Engine
from service.pool import WorkPool
from service.uploads import Uploads, form_body

TRACKS = "/v1/tracks"
WORKS = "/v1/works"


class TrackForm(BaseModel):
    audio: UploadFile = Field(description="the reference recording: any format FFmpeg reads")
    external_id: str = Field(min_length=1, max_length=512, description="the rights holder's id of the recording")
    rights: Rights = Field(description="protected: block copies; licensed: allow them with attribution")
    owner: str = Field("", max_length=512, description="the rights holder")
    title: str = Field("", max_length=1024, description="default: the external id")
    work_id: str = Field("", max_length=32, description="the work (song) it records: an ISWC or the catalog's own id")
    work_title: str = Field("", max_length=1024, description="a new work's title")
    work_owner: str = Field("", max_length=512, description="a new work's rights holder")
    work_rights: WorkRights = Field(WorkRights.unknown, description="a new work's rights (a work already in the "
                                                                    "catalog keeps its own: PUT /v1/works/ID)")

    def work(self) -> WorkInfo | None:
        return WorkInfo(valid_work_id(self.work_id), self.work_title, self.work_owner, self.work_rights) \
            if self.work_id else None


class TrackChange(BaseModel):
    rights: Rights | None = Field(None, description="the recording's rights; applies to the next check, nothing is "
                                                    "re-indexed")
    work_id: str | None = Field(None, max_length=32, description="the work (song) it records, already in the catalog; "
                                                                 "null: none")
    note: str = Field("", max_length=2000, description="why (a licence reference, a ticket); kept in the audit log")


class WorkChange(BaseModel):
    title: str | None = Field(None, max_length=1024)
    owner: str | None = Field(None, max_length=512, description="the work's rights holder (a publisher)")
    rights: WorkRights | None = Field(None, description="protected, licensed or unknown (a new work's default); "
                                                        "applies to the next check")
    note: str = Field("", max_length=2000, description="why (a licence reference, a ticket); kept in the audit log")


class CatalogAdmin:
    """Catalog changes made over HTTP. They go through a catalog handle of their own (see
    ``Engine.open_catalog``) and run one at a time on the catalog pool's single worker."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.references = engine.settings.home / "references"

    @cached_property
    def catalog(self) -> Catalog:
        return self.engine.open_catalog()

    def add(self, form: TrackForm) -> Track:
        """Keep the uploaded recording and index it; raises ``Conflict`` for an external id or a
        recording already in the catalog and ``AudioError`` for audio that cannot be indexed."""
        store = self.engine.store
        if store.find(form.external_id):
            raise Conflict(f"external_id '{form.external_id}' is already in the catalog; remove it first or "
                           "choose another id")
        path, digest, new = self._keep(form.audio)
        try:
            summary = self.catalog.index_paths(
                [path], form.rights, owner=form.owner,
                entries={path.resolve(): ManifestEntry(form.external_id, form.title, form.owner, form.work())})
        finally:
            if new and store.find(form.external_id) is None:
                path.unlink(missing_ok=True)
        if summary.skipped:
            raise Conflict(f"this recording is already in the catalog as '{store.find_by_hash(digest).external_id}'")
        if summary.failed:
            raise AudioError(form.audio.filename or "upload", summary.failed[0][1],
                             too_large=bool(summary.too_large))
        return store.find(form.external_id)

    def remove(self, external_id: str) -> None:
        """Take a track down: its vectors and row go, and its audio if it was uploaded here
        (``NotFound`` when there is no such track)."""
        for track in self.catalog.remove([external_id]):
            if Path(track.source_path).parent == self.references.resolve():
                Path(track.source_path).unlink(missing_ok=True)

    def _keep(self, upload: UploadFile) -> tuple[Path, str, bool]:
        """(path, SHA-256, whether the file is new) of the upload stored under its hash."""
        self.references.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=self.references, prefix=".upload-", delete=False) as part:
            for block in iter(lambda: upload.file.read(1 << 20), b""):
                digest.update(block)
                part.write(block)
        suffix = Path(upload.filename or "").suffix.lower()
        path = self.references / f"{digest.hexdigest()}{suffix if suffix in AUDIO_SUFFIXES else ''}"
        if path.exists():
            os.unlink(part.name)
            return path, digest.hexdigest(), False
        os.replace(part.name, path)
        return path, digest.hexdigest(), True


def catalog_router(engine: Engine, pool: WorkPool) -> APIRouter:
    """The routes of ``/v1/tracks``; uploads and takedowns run in ``pool``."""
    router = APIRouter(tags=["catalog"])
    admin = CatalogAdmin(engine)
    uploads = Uploads(engine.settings)
    catalog_admin = require(Role.catalog_admin)

    @router.get(TRACKS, summary="The catalog")
    def list_tracks(_: Principal = Depends(catalog_admin)) -> dict:
        return {"tracks": [_shown(t) for t in engine.store.list_tracks()]}

    @router.post(TRACKS, status_code=201, summary="Add a reference recording", openapi_extra=form_body(TrackForm),
                 responses={201: {"description": "the new track; answered once it is indexed"}})
    async def add_track(request: Request, who: Principal = Depends(catalog_admin)) -> JSONResponse:
        async with uploads.read_form(request, TrackForm, who.key_id) as form, pool.slot():
            track = await pool.run(admin.add, form)
        return JSONResponse(_shown(track), status_code=201,
                            headers={"Location": f"{TRACKS}/{quote(track.external_id, safe='')}"})

    @router.get(TRACKS + "/{external_id:path}", summary="One catalog track")
    def get_track(external_id: str, _: Principal = Depends(catalog_admin)) -> dict:
        return _shown(_track(engine, external_id))

    @router.patch(TRACKS + "/{external_id:path}", summary="Change a track's rights or the work it records")
    def change_track(external_id: str, change: TrackChange, who: Principal = Depends(catalog_admin)) -> dict:
        """Each change is audited under the caller's key, as a change made in the dashboard is."""
        review = Review(engine.store)
        _track(engine, external_id)
        if "work_id" in change.model_fields_set:
            work_id = valid_work_id(change.work_id) if change.work_id is not None else None
            review.link_work(external_id, work_id, actor=who.actor, note=change.note)
        if change.rights is not None:
            review.change_rights(external_id, change.rights, actor=who.actor, note=change.note)
        return _shown(_track(engine, external_id))

    @router.delete(TRACKS + "/{external_id:path}", status_code=204, summary="Take a track down")
    async def remove_track(external_id: str, _: Principal = Depends(catalog_admin)) -> Response:
        async with pool.slot():
            await pool.run(admin.remove, external_id)
        return Response(status_code=204)

    @router.get(WORKS, summary="The works (songs) of the catalog")
    def list_works(_: Principal = Depends(catalog_admin)) -> dict:
        return {"works": [work_dict(w, recordings) for w, recordings in engine.store.list_works()]}

    @router.get(WORKS + "/{work_id:path}", summary="One work, with the tracks that record it")
    def get_work(work_id: str, _: Principal = Depends(catalog_admin)) -> dict:
        return _work(engine, work_id)

    @router.put(WORKS + "/{work_id:path}", summary="Add a work or change it")
    def put_work(work_id: str, change: WorkChange, who: Principal = Depends(catalog_admin)) -> dict:
        """A new work (rights unknown unless given) and a change of its rights are audited under
        the caller's key; the next check uses them."""
        Review(engine.store).put_work(work_id, title=change.title, owner=change.owner, rights=change.rights,
                                      actor=who.actor, note=change.note)
        return _work(engine, work_id)

    return router


def _work(engine: Engine, work_id: str) -> dict:
    found = engine.store.list_works(work_id)
    if not found:
        raise NotFound(f"no work with id '{work_id}'")
    return work_dict(*found[0])


def _shown(track: Track) -> dict:
    """A track as the API shows it: its audio file named, not where the server keeps it."""
    public = track.to_dict()
    public["source_file"] = Path(public.pop("source_path")).name
    return public


def _track(engine: Engine, external_id: str) -> Track:
    track = engine.store.find(external_id)
    if track is None:
        raise NotFound(f"no track with external_id '{external_id}'")
    return track
