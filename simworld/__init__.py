"""The simulated world around the relay host, shared by the sandbox, the tests and the benchmarks.

- ``standin``: a stand-in for Customers Mail Cloud's SMTP endpoint (aiosmtpd), in-process or
  as ``python -m simworld.standin``.
- ``netns_rig``: the rendered relay on real Postfix and dnsmasq in network namespaces, against
  the stand-in (the integration tests' and the benchmarks' rig); ``smtp_client`` and
  ``wire_tap`` are the scripts it runs inside the relay's namespace.
- ``twin``: the image twins, Debian roots built like AWS's EC2 images and booted with
  systemd-nspawn (the sandbox's host and the twin tests'), with moto as AWS around them.
- ``agents``: the small programs the twins' world runs in its network namespace (``python -m
  simworld.agents``): moto as AWS's endpoints, an SMTP submit client, a metrics reader.

Nothing here imports from ``tests``.
"""
