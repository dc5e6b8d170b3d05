"""Admin routes: analytics over every job and worker, and the audit trail."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from distillab.service.db import AuditEvent, JobRecord, User, Worker, utcnow
from distillab.service.deps import MAX_OFFSET, NAME_PATTERN, AdminUser, WriteSession, audit_event
from distillab.service.schemas import errors, iso
from distillab.service.settings import Settings
from distillab.service.store import ACTIVE


def router(settings: Settings) -> APIRouter:
    router = APIRouter()
    @router.get("/analytics", tags=["admin"], responses=errors(403))
    def analytics(user: AdminUser, session: WriteSession) -> dict:
        """Jobs, success rate, distilled-vs-scratch improvement, popular strategies and
        models, and utilisation (queue length, live workers, load)."""
        audit_event(session, user, "admin.analytics")
        counts = dict(session.execute(select(JobRecord.status, func.count()).group_by(JobRecord.status)).all())
        total = sum(counts.values())
        ended = sum(counts.get(s, 0) for s in ("completed", "failed", "stopped"))
        improvements, models = [], Counter()
        for spec, metrics in session.execute(select(JobRecord.spec, JobRecord.metrics)):
            models[spec["student"]["model"]] += 1
            summary = (metrics or {}).get("summary")
            if summary:
                improvements.append(summary["distilled_accuracy"] - summary["scratch_accuracy"])
        strategies = dict(session.execute(select(JobRecord.strategy, func.count()).group_by(JobRecord.strategy)).all())
        cutoff = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
        live = session.scalars(select(Worker).where(Worker.heartbeat_at >= cutoff, Worker.stopped_at.is_(None))).all()
        busy = sum(1 for w in live if w.job_id)
        device_seconds = session.scalar(select(func.coalesce(func.sum(JobRecord.device_seconds), 0.0)))
        return {
            "total_jobs": total,
            "active_jobs": sum(counts.get(s, 0) for s in ACTIVE),
            "completed_jobs": counts.get("completed", 0),
            "jobs_by_status": counts,
            "success_rate": counts.get("completed", 0) / ended if ended else None,
            "average_improvement": sum(improvements) / len(improvements) if improvements else None,
            "improvement_basis": f"distilled minus scratch test accuracy, mean over {len(improvements)} completed job(s)",
            "popular_strategies": dict(sorted(strategies.items(), key=lambda kv: -kv[1])),
            "model_type_distribution": dict(models.most_common()),
            "device_hours": device_seconds / 3600,
            "training_cost_usd": device_seconds / 3600 * settings.price_per_device_hour,
            "system_utilization": {
                "queue_length": counts.get("queued", 0),
                "live_workers": len(live),
                "busy_workers": busy,
                "current_load": busy / len(live) if live else None,
            },
        }

    @router.get("/audit", tags=["admin"], responses=errors(403))
    def audit(user: AdminUser, session: WriteSession,
              action: Annotated[str | None, Query(max_length=64, pattern=NAME_PATTERN)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict:
        query = select(AuditEvent, User.name).outerjoin(User, AuditEvent.user_id == User.id)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        rows = session.execute(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)).all()
        audit_event(session, user, "admin.audit", filter_action=action)
        return {"items": [{"id": e.id, "at": iso(e.at), "user": name, "action": e.action, "target": e.target,
                           "detail": e.detail} for e, name in rows], "limit": limit, "offset": offset}

    return router
