"""The agent loop on the host; every action it takes runs in the guest.

Public API: :func:`run_task`, :class:`AgentSettings`, :class:`ApprovalMode`,
:class:`RunSummary`; what a channel must offer is
:class:`cowork.host.channel.CommandChannel`; :class:`OfflineModel`
(the scripted Messages-API server), :class:`AnthropicModel`.
"""

from cowork.host.agent.loop import RunSummary, StopReason
from cowork.host.agent.settings import AgentSettings, ApprovalMode

__all__ = ["AgentSettings", "ApprovalMode", "RunSummary", "StopReason"]
