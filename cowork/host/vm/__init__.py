"""Virtual machines: a backend-neutral :class:`~cowork.host.vm.spec.VMSpec` and backends."""
