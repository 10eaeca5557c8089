"""The integration rig's pieces, one module per part of the simulated host and its world:
``process`` (running and stopping), ``network`` (namespaces, addresses, the delaying proxy),
``dns`` (upstream resolver and the relay's cache), ``service`` (the stand-in as a process),
``postfix`` (the relay's Postfix, configured by the shipped cmc-relay-setup), ``mail`` (test
messages and replies), ``aws`` (moto's Secrets Manager and the real fetch script).
``simworld.netns_rig`` puts them together (``Rig``, ``build_rig``) and draws the layout.
"""
