"""Entry point of the cmc-relay component plugin: the Python language host runs this file."""

from cmc_relay.components.provider import main

main()
