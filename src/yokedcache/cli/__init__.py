"""The ``yokedcache`` command line: ``yokedcache [GLOBAL OPTIONS] COMMAND [OPTIONS]``.

``cli`` is the click group, ``main`` the console-script entry point (also ``python -m yokedcache``), ``run``
returns the exit code instead of exiting (for embedding and tests).
"""

from __future__ import annotations

from . import commands as _commands  # registers the commands on the group
from .app import cli, main, run

__all__ = ["cli", "main", "run"]
del _commands
