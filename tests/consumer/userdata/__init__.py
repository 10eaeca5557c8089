"""The consumer project's own ``userdata`` package: what its application servers boot with."""
