"""The image pin: which image the hosts run, kept in the stack's state until the user moves it.

Pure. A newer official image must not replace the hosts, so the image found when the pin is
created is recorded in the pin (a ``local.Command`` whose ``create`` is ``echo <image>``, with
``ignore_changes=["create"]``) and read back from it on every later run. What the image
depends on (OS, architecture, the user's ``image_refresh``) is in the pin's *name*, not in its
triggers: a replacement keeps ignored inputs from the old state (Pulumi's ``ignoreChanges``),
so only a new resource, under a new name, takes the image looked up now.
"""

import re
from typing import Final

from cmc_relay.userdata.settings import ConfigError

AMI_ID: Final = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
# What image_refresh may be: a token for the pin's name, such as a date (2027-01-15).
IMAGE_REFRESH: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_PIN_COMMAND: Final = "echo "


def image_pin_name(name: str, os: str, architecture: str, refresh: str | None) -> str:
    """The pin's resource name: a new name (a new pin, the newest image) whenever what the
    image depends on changes."""
    return f"{name}-image-{os}-{architecture}" + (f"-{refresh}" if refresh else "")


def pin_command(image_id: str) -> str:
    """The pin's ``create``: it holds the image id, and prints it when run."""
    if not AMI_ID.match(image_id):  # it goes into a shell command
        raise ValueError(f"{image_id!r} is not an AMI id")
    return f"{_PIN_COMMAND}{image_id}"


def pinned_image(command: str) -> str:
    """The image id a pin's ``create`` holds (as the state has it, so also in a preview)."""
    image_id = command.removeprefix(_PIN_COMMAND).strip()
    if not command.startswith(_PIN_COMMAND) or not AMI_ID.match(image_id):
        raise ValueError(f"the image pin holds {command!r}, not {_PIN_COMMAND}<AMI id>")
    return image_id


def check_image_refresh(value: object) -> str:
    """image_refresh as given: a token that becomes part of the pin's name."""
    if not isinstance(value, str) or not IMAGE_REFRESH.match(value):
        raise ConfigError(
            "image_refresh",
            f"{value!r}: give up to 40 letters, digits, '.', '_' or '-', such as a date "
            "(2027-01-15); changing it moves the hosts to the newest official image",
        )
    return value
