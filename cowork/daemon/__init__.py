"""coworkd: the per-user service that owns sessions, and the protocol faces use to talk to it.

:mod:`cowork.daemon.protocol` (typed messages) and :mod:`cowork.daemon.client` import nothing
heavy; :mod:`cowork.daemon.server` is the service itself and imports the host library.
"""
