"""cowork: hand a folder to an AI agent safely.

The library lives in :mod:`cowork.host` (everything that touches the VM, policy, the egress
gateway and secrets) and :mod:`cowork.guest` (the init that runs inside the VM, standard
library only). :mod:`cowork.cli` and :mod:`cowork.app` are thin faces over it.
"""

__version__ = "0.1.0"
