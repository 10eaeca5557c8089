"""The on-host scripts (userdata/scripts, no .py suffix) loaded as modules, for direct tests."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "userdata" / "scripts"


def load_script(name: str) -> ModuleType:
    """``userdata/scripts/NAME`` as a fresh module (its ``main`` is not run); what the scripts
    share (``cmc_relay_host``) importable as on the host, from the scripts' directory."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(SCRIPTS / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # where dataclasses look up the module's annotations
    loader.exec_module(module)
    return module
