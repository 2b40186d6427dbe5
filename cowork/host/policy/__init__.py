"""Admin policy, user settings and trusted workspace config, merged into one frozen Policy.

Pipeline: parse (:mod:`.load`) → validate one layer (:mod:`.schema`) → merge layers
(:mod:`.merge`, whose docstring holds THE MERGE RULES) → frozen :class:`Policy`.
Entry points: :func:`load_effective` (sessions), :func:`load_policy`, :class:`PolicyWatcher`.
"""

from cowork.host.policy.effective import check_file, load_effective, load_policy
from cowork.host.policy.load import Layer, PolicySource
from cowork.host.policy.merge import Origin, Policy
from cowork.host.policy.reload import PolicyWatcher
from cowork.host.policy.schema import ALL_KEYS, PolicyDocument, json_schema, json_schema_text

__all__ = [
    "ALL_KEYS",
    "Layer",
    "Origin",
    "Policy",
    "PolicyDocument",
    "PolicySource",
    "PolicyWatcher",
    "check_file",
    "json_schema",
    "json_schema_text",
    "load_effective",
    "load_policy",
]
