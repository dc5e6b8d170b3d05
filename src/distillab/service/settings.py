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
    max_body_kb: float = Field(1024.0, gt=0, description="largest JSON request body (uploads use max_upload_mb)")
    max_seeds: int = Field(10, ge=1, description="seeds one job may run")
    max_job_device_hours: float = Field(24.0, gt=0, description="largest estimated device time of one job")
    max_model_parameters: int = Field(150_000_000, ge=1, description="largest teacher or student a job may build, "
                                                                      "or a language model upload may hold")
    max_queued_jobs_per_user: int = Field(20, ge=1, description="a user's queued jobs; one more is a 429")
    auth_failures_per_minute: int = Field(20, ge=1, description="wrong API keys from one client before 429s")
    trusted_proxies: str = Field("", description="comma-separated addresses of reverse proxies whose "
                                                 "X-Forwarded-For names the client; empty: none is believed")
    requests_per_minute: int = Field(1200, ge=1, description="API requests per user per sliding minute; then 429")
    max_running_jobs_per_user: int = Field(2, ge=1, description="a user's jobs running at once; workers leave "
                                                                "the user's next ones queued")
    max_stored_mb_per_user: float = Field(10_000.0, gt=0, description="a user's uploads and job results; past it "
                                                                      "new jobs and uploads are a 403")
    study_url: str | None = Field(None, description="SQLAlchemy URL of the database that holds automated searches' "
                                                    "studies, which idle workers join; default: SQLite under "
                                                    "data_dir (the workers of one machine); PostgreSQL for many")
    help_searches: bool = Field(True, description="an idle worker trains trials of another worker's running search")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'distillab.db').resolve()}"

    @property
    def resolved_study_url(self) -> str:
        """Not the job database: Optuna keeps its own tables (and its own Alembic version) there."""
        return self.study_url or f"sqlite:///{(self.data_dir / 'studies.db').resolve()}"


def private_data_dir(settings: Settings) -> Path:
    """Create the data directory readable by its owner only (0700): it holds the database,
    uploaded teachers and every user's results. The ``serve`` and ``worker`` commands also set
    the process umask to 077, so the files made inside are 0600."""
    folder = settings.data_dir
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder
