"""One settings object for every entry point, read from ``CLEARANCE_*`` environment variables
and overridden by CLI flags. Every field has a default and a help text (``clearance settings``
prints them)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from detector.policy import DEFAULT_POLICY


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLEARANCE_", extra="ignore")

    home: Path = Field(Path(".clearance"), description="folder holding the catalog database and index files")
    db: str | None = Field(None, description="database URL; default: SQLite file catalog.db inside home")
    model: Path | None = Field(None, description="model checkpoint; default: the weights shipped in the package")
    calibration: Path | None = Field(None, description="score calibration JSON; default: the one shipped with the model")
    policy: Path = Field(DEFAULT_POLICY, description="licensing policy file (TOML)")
    index_factory: str = Field("Flat", description="FAISS factory string of the vector index (after IDMap2)")
    max_upload_mb: float = Field(100.0, description="largest accepted upload or input file, MB")
    max_audio_s: float = Field(600.0, description="longest accepted output to check, seconds of audio")
    max_reference_s: float = Field(3 * 3600.0, description="longest accepted catalog recording, seconds")
    decode_timeout_s: float = Field(60.0, description="wall-clock limit for decoding one file, seconds")
    check_workers: int = Field(2, description="checks run at once by the HTTP service")
    check_queue: int = Field(16, description="checks waiting for a worker before the service answers 503")

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{(self.home / 'catalog.db').resolve()}"
