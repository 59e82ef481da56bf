"""The ``bitfab`` command line: the shell floor.

Each subcommand is a module of this package, imported only when invoked (``bitfab info`` never
imports torch or amaranth); its shared helpers are :mod:`bitfab.cli.ui`. A new command is one
module and one line in :data:`COMMANDS`. Nothing below the shell imports it. Every
:class:`~bitfab.errors.BitfabError` becomes one line on stderr and exit status 1; every command
that reports something takes ``--json`` and then prints one JSON object.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from bitfab.errors import BitfabError

from .ui import emit_json, plain

#: ``emit_json`` is the --json printer, for scripts that import the CLI
__all__ = ["main", "run", "COMMANDS", "emit_json"]

#: name -> "module:attribute" of a click command, imported on first use.
COMMANDS = {
    "info": "bitfab.cli.info:info",
    "eval": "bitfab.cli.evaluate:eval_",
    "demo": "bitfab.demo:demo",
    "verilog": "bitfab.cli.verilog:verilog",
    "train": "bitfab.cli.train:train",
    "sim": "bitfab.cli.sim:sim",
    "synth": "bitfab.cli.board:synth",
    "board": "bitfab.cli.board:board",
    "import": "bitfab.cli.interop:import_",
    "export": "bitfab.cli.interop:export",
    "sweep": "bitfab.cli.sweep:sweep",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bitfab")
def main():
    """bitfab: quantized neural networks to bit-exact FPGA hardware."""


# --- entry point ----------------------------------------------------------------------------------


def run(argv=None) -> None:
    """Run the CLI: bitfab errors become one line on stderr and a non-zero exit status."""
    try:
        main.main(args=argv, prog_name="bitfab", standalone_mode=False)
    except BitfabError as exc:
        click.echo(f"error: {plain(exc)}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # a bad option or argument: one line too (click's own usage text is for --help)
        where = getattr(getattr(exc, "ctx", None), "command_path", "bitfab")
        click.echo(f"error: {plain(exc.format_message())} (see {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug in bitfab: one line, the traceback on request
        if os.environ.get("BITFAB_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {plain(exc)} "
                   f"(set BITFAB_DEBUG=1 for the traceback)", err=True)
        sys.exit(2)
