"""The relay host, booted locally without AWS: ``python -m sandbox`` (``make sandbox``), as root.

It renders the Debian 12 payload with the same function ``pulumi up`` uses, boots it through
real cloud-init in a throwaway root (private namespaces, an overlay of ``/`` on tmpfs), with a
local Secrets Manager (moto), a stand-in for Customers Mail Cloud and a stand-in VPC resolver
around it; relays a message, runs the on-host verifier and tears everything down. The real
root file system and network are never changed. See ``session`` for the layout and
``simworld.throwaway`` for the namespaces.
"""
