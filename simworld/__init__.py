"""The simulated world around the relay host, shared by the sandbox, the tests and the benchmarks.

Two ways to run the host's payload here, each for its purpose:

- ``netns_rig`` (pieces in ``rig/``): the integration rig. Real Postfix and dnsmasq in network
  namespaces, configured by the shipped cmc-relay-setup from the rendered payload, relaying to
  the stand-in; the integration tests' and the benchmarks' rig, and the verifier's mutation
  tests' host. ``smtp_client``, ``wire_tap`` and ``delay_proxy`` are the scripts it runs inside
  its namespaces; ``queue_volume`` puts the queue on a loop device as EC2 does on a volume.
- ``twin``: the image twins, Debian roots with the package set of each supported EC2 image,
  booted with systemd-nspawn into a simulated VPC (``world``: DNS, moto for AWS, the IMDS
  stand-in ``imds``, a package mirror); ``scenario`` is what the sandbox and the twin tests
  prove on them. ``python -m sandbox`` boots one.

And around them: ``standin``, the stand-in for Customers Mail Cloud's SMTP endpoint
(aiosmtpd), in-process or as ``python -m simworld.standin``; ``agents``, the small programs the
twins' world runs in its network namespace (``python -m simworld.agents``: moto as AWS's
endpoints, an SMTP submit client, a metrics reader); ``alarm_check``, which of the component's
alarms CloudWatch would raise from the datapoints (moto evaluates none).

Nothing here imports from ``tests``, and the product (``cmc_relay``) imports nothing from here.
"""
