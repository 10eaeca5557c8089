"""The simulated world around the relay host, shared by the sandbox, the tests and the benchmarks.

- ``standin``: a stand-in for Customers Mail Cloud's SMTP endpoint (aiosmtpd), in-process or
  as ``python -m simworld.standin``.
- ``netns_rig``: the rendered relay on real Postfix and dnsmasq in network namespaces, against
  the stand-in (the integration tests' and the benchmarks' rig); ``smtp_client`` and
  ``wire_tap`` are the scripts it runs inside the relay's namespace.
- ``throwaway``: the sandbox's throwaway machine (private namespaces, an overlay of ``/`` on
  tmpfs).
- ``agents``: the small programs the sandbox runs in its network namespace (``python -m
  simworld.agents``): a local Secrets Manager (moto), syslog, an SMTP submit client.

Nothing here imports from ``tests``.
"""
