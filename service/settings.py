"""One settings object for every entry point, read from ``CLEARANCE_*`` environment variables
and overridden by CLI flags. Every field has a default and a help text (``clearance settings``
prints them)."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from detector.policy import DEFAULT_POLICY
from index.pipeline import IndexEngine


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLEARANCE_", extra="ignore")

    home: Path = Field(Path(".clearance"), description="folder holding the catalog database and index files")
    db: str | None = Field(None, description="database URL; default: SQLite file catalog.db inside home")
    model: Path | None = Field(None, description="model checkpoint; default: the weights shipped in the package")
    calibration: Path | None = Field(None, description="score calibration JSON; default: the one shipped with the model")
    policy: Path = Field(DEFAULT_POLICY, description="licensing policy file (TOML)")
    index_factory: str = Field(
        "auto", description="FAISS factory string of the vector index: 'auto' (exact 'Flat' up to 1,000,000 vectors, "
                            "about 69 h of audio at the model's 0.25 s reference hop, then a trained IVF+PQ index "
                            "sized to the catalog), 'Flat', or an IVF-family string such as 'IVF4096,PQ64x4fsr'; "
                            "a change applies at the next indexing job or `clearance index --rebuild`")
    index_nprobe: int = Field(32, ge=1, description="inverted lists a compressed (IVF) index searches per query window")
    index_workers: int = Field(os.cpu_count() or 1, ge=0,
                               description="processes (local engine) or Ray actors that decode, embed, "
                                           "Chromaprint and take the landmarks of catalog files (default: one per "
                                           "CPU core); 0: the indexing process itself")
    index_engine: IndexEngine = Field(IndexEngine.local, description="where indexing runs: 'local' (worker "
                                                                     "processes on this machine) or 'ray' (Ray Data "
                                                                     "tasks)")
    ray_address: str | None = Field(None, description="Ray cluster for --engine ray ('head:6379' or "
                                                      "'ray://head:10001'); default RAY_ADDRESS, else a local instance")
    index_publish_s: float = Field(30.0, gt=0, description="seconds between publishes of the index during a job; a "
                                                           "killed job redoes at most this much work")
    max_upload_mb: float = Field(100.0, description="largest accepted upload or input file, MB")
    max_audio_s: float = Field(600.0, description="longest accepted output to check, seconds of audio")
    max_reference_s: float = Field(3 * 3600.0, description="longest accepted catalog recording, seconds")
    decode_timeout_s: float = Field(60.0, description="wall-clock limit for decoding one file, seconds")
    serve_shards: int = Field(1, ge=1, description="shards the catalog is searched in, split by track; a check "
                                                   "finds exactly what it finds in the whole catalog. 1: searched "
                                                   "whole; more: each shard a Ray Serve deployment (serve_engine 'ray') "
                                                   "or cut in the serving process ('local'); each publish then also "
                                                   "saves the catalog in that many shards, which the Ray replicas "
                                                   "open")
    serve_engine: IndexEngine = Field(IndexEngine.local, description="where the shards are held: 'local' (in the "
                                                                     "serving process) or 'ray' (Ray Serve, on "
                                                                     "ray_address)")
    serve_replicas: int = Field(1, ge=1, description="Ray Serve replicas holding each shard (serve_engine 'ray'): "
                                                     "checks go on while one of them runs; Serve replaces one that "
                                                     "dies")
    check_workers: int = Field(2, ge=1, description="checks run at once by the HTTP service")
    check_queue: int = Field(16, ge=0, description="checks waiting for a worker before the service answers 503")
    catalog_queue: int = Field(4, ge=0, description="catalog uploads waiting for the one catalog writer before the "
                                                    "service answers 503")
    upload_timeout_s: float = Field(300.0, gt=0, description="longest time a client may take to send an upload, "
                                                             "seconds; slower uploads are answered 408")
    upload_idle_timeout_s: float = Field(30.0, gt=0, description="longest pause in an upload, seconds: an upload "
                                                                 "that sends nothing for this long is answered 408")
    max_uploads_per_key: int = Field(4, ge=1, description="uploads one API key may be sending at once to each "
                                                          "upload route; more are answered 429, so a client that "
                                                          "stalls its uploads holds no more than these")
    header_timeout_s: float = Field(10.0, gt=0, description="time a connection has to send a complete request "
                                                            "head (request line and headers), seconds, from when it "
                                                            "opens or its previous response ends; then it is closed")
    max_request_kb: int = Field(64, ge=1, description="largest accepted HTTP request body other than an audio "
                                                      "upload, KiB")
    # the review dashboard (service/dashboard) and the audio it plays
    keep_outputs: bool = Field(True, description="keep each checked output's audio in home/outputs so reviewers "
                                                 "can hear it")
    review_session_hours: float = Field(8.0, gt=0, description="how long a review dashboard sign-in lasts, hours")
    review_excerpt_margin_s: float = Field(5.0, ge=0, description="reference audio served to reviewers before and "
                                                                  "after a matched span, seconds")
    review_page_size: int = Field(50, ge=1, description="checks per page of the review queue")

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{(self.home / 'catalog.db').resolve()}"
