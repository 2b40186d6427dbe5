"""The cowork library: VM, channel, policy, trust, egress, secrets, events, agent, session.

Nothing in this package imports a GUI toolkit.
"""
