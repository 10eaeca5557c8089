"""The relay host, booted locally without AWS: ``python -m sandbox`` (``make sandbox``), as root.

It renders the default OS's payload with the same function ``pulumi up`` uses and boots it on
a twin of that OS's EC2 image (``simworld.twin``: systemd as PID 1 in systemd-nspawn, real
cloud-init), with moto as AWS, a stand-in for Customers Mail Cloud and a stand-in VPC resolver
around it; relays a message, runs the on-host verifier, reboots and tears everything down. The
machine's own root file system and network are never changed. See ``__main__`` for the steps.
"""
