"""The runbooks of a change of master, each in its own module, around one shared core.

proxy.health.failover.FailoverCoordinator is the entry point: it owns the FailoverCore
(collaborators, the one lock, the step log), builds the runbooks on it and dispatches bus
events, monitor samples and operator calls to them. A runbook never reaches into another
one's state; the coordinator hands each the others it needs.
"""
