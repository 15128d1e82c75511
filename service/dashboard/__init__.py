"""The legal review dashboard, served under ``/review/`` by the HTTP service: a queue of checks,
a page per check where reviewers hear the output beside the recording it matched and record a
verdict in an append-only audit log, evidence reports, and the catalog with audited rights."""
from service.dashboard.app import create_dashboard

__all__ = ["create_dashboard"]
