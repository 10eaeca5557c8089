"""The relay host, booted locally without AWS: ``python -m sandbox`` (``make sandbox``), as root.

It builds (or reuses, from /var/cache/cmc-relay-twins) the image twin of the default OS, renders
the payload with the same function ``pulumi up`` uses, and boots the twin with systemd as PID 1
through real cloud-init, in a simulated VPC (moto for Secrets Manager, S3 and CloudWatch, an
IMDS stand-in, the stand-in for Customers Mail Cloud; ``simworld.twin.world``). It relays a
message, refuses an outsider, runs the on-host verifier, reboots and verifies again, shows what
an operator would see in CloudWatch, and tears everything down. The machine's own root file
system and network are never changed. See ``__main__`` for the steps and ``docs/sandbox.md``.
"""
