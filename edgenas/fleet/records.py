"""Deployment records: moved to :mod:`edgenas.records.deployments` (the one owner of the SQL on the
``deployments`` table); these names stay importable from here for the fleet verbs."""

from edgenas.records.deployments import Deployment, expected_state, history, record_deployment

__all__ = ["Deployment", "expected_state", "history", "record_deployment"]
