"""IPython extension: ``%load_ext papyrus_widgets`` registers the ``%papyrus`` line magic.

``%papyrus search photo.jpg -k 5`` returns a :class:`~papyrus_widgets.api.Results` (shown as a
grid); ``%papyrus ingest DIR --metadata XML_DIR``, ``%papyrus doctor`` and ``%papyrus db`` print
what the shell command prints. The arguments are those of the ``papyrus`` command.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from .errors import PapyrusError


def papyrus_magic(line: str) -> Any:
    """Run a ``papyrus`` sub-command inside the kernel; ``search`` returns its Results."""
    from . import cli

    parser = cli.build_parser()
    try:
        args = parser.parse_args(shlex.split(line))
    except SystemExit:  # argparse already printed the usage line
        return None
    if args.command == "demo":
        print("%papyrus demo is for the shell (it starts JupyterLab): use `papyrus demo` in a terminal.")
        return None
    try:
        if args.command == "search":
            from .api import get_engine

            request = cli.search_request(args)
            return get_engine(cli.settings_from_args(args)).run_search(args.image, request)
        args.func(args)
    except (PapyrusError, argparse.ArgumentTypeError) as exc:
        print(f"papyrus {args.command}: {exc}")
    return None


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magic_function(papyrus_magic, magic_kind="line", magic_name="papyrus")
