"""Service settings from the environment (prefix ``DISTILLAB_``) or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DISTILLAB_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("distillab-data"), description="jobs, uploads and the default SQLite database")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in WAL mode under data_dir")
    price_per_device_hour: float = Field(0.50, ge=0, description="USD per device-hour, for cost estimates")
    max_upload_mb: float = Field(200.0, gt=0, description="largest model upload accepted")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="a running job without a heartbeat this long is re-queued")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'distillab.db').resolve()}"
