"""The agent loop on the host; every action it takes runs in the guest.

Public API: :func:`run_task`, :class:`AgentSettings`, :class:`ApprovalMode`,
:class:`RunSummary`, :class:`GuestRunner` (what a channel must offer), :class:`OfflineModel`
(the scripted Messages-API server), :class:`AnthropicModel`.
"""

from cowork.host.agent.loop import RunSummary, StopReason
from cowork.host.agent.settings import AgentSettings, ApprovalMode
from cowork.host.agent.tools import GuestRunner

__all__ = ["AgentSettings", "ApprovalMode", "GuestRunner", "RunSummary", "StopReason"]
