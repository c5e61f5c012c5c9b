"""The ``genofed`` command: a thin click layer over library functions.

Each command parses its options and calls one library function with keyword
arguments. Only this module configures logging. A :class:`GenofedError` becomes one
line on stderr and exit code 1 (``-v`` shows the traceback); usage errors exit 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from pipeline import __version__
from pipeline.errors import GenofedError

log = logging.getLogger("pipeline")


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def verbose_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--verbose`` (repeatable): more logging, and tracebacks on errors."""
    return click.option("-v", "--verbose", count=True, help="More logging (-vv for debug); show tracebacks on errors.")(func)


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress``: progress bars, on by default only on a terminal."""
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Show progress bars (default: only when stderr is a terminal).",
    )(func)


def force_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--force``: replace an existing output."""
    return click.option("--force", is_flag=True, help="Replace the output if it already exists.")(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: print a machine-readable summary on stdout instead of text."""
    return click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")(func)


def resolve_progress(progress: bool | None) -> bool:
    """Progress bars default to on only when stderr is an interactive terminal."""
    return sys.stderr.isatty() if progress is None else progress


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Runs a command body, turning library errors into one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, verbose: int = 0, **kwargs: Any) -> Any:
        _configure_logging(verbose)
        try:
            return func(*args, **kwargs)
        except GenofedError as error:
            if verbose:
                log.exception("failed")
            click.echo(f"genofed: error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("genofed: interrupted; no output was written", err=True)
            sys.exit(130)

    return verbose_option(wrapper)


def echo_summary(summary: dict[str, Any], *, as_json: bool, text: str) -> None:
    """Prints either the JSON summary or the human text."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="genofed")
def main() -> None:
    """genofed: federated genomics where the coordinator only ever learns sums.

    A site harmonizes its VCF/BCF files into the shared Arrow contract
    (`genofed ingest`), checks them (`genofed qc`), and joins federated analyses
    whose contributions are combined by secure aggregation.
    """


@main.group()
def cohort() -> None:
    """Realistic simulated multi-site cohorts (for the demo, tests and benchmarks)."""


if __name__ == "__main__":  # pragma: no cover
    main()
