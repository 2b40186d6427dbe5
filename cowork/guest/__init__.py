"""Code that runs inside the guest VM. Standard library only: it runs on the image's Python.

The host imports :mod:`cowork.guest.contract` (the seed format and the names both sides
agree on); everything else here is executed in the guest only.
"""
