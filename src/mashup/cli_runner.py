"""How the `mashup` command runs a command line: multi-value options expanded for click, and every error (a
user error, an invalid option value, the file system's, a usage error, an interrupt) one line with its exit
status."""

from __future__ import annotations

import logging
import sys
import warnings

import typer
from pydantic import ValidationError

from mashup.cli_options import err, option_named
from mashup.config_files import first_problem
from mashup.errors import MashupError
from mashup.progress import quiet_third_party

MULTI_VALUE_OPTIONS = frozenset({"--checkpoints", "--weights"})


def expand_multi_value_options(argv: list[str], options: frozenset[str] = MULTI_VALUE_OPTIONS) -> list[str]:
    """``--checkpoints A B`` -> ``--checkpoints A --checkpoints B`` (click options take one value each)."""
    out: list[str] = []
    current: str | None = None  # the multi-value option whose values are being read
    dangling = False  # ``current`` has no value yet: keep it as given, so click reports the missing value
    for token in argv:
        is_option = token == "--" or (token.startswith("-") and not _is_number(token))
        if (is_option or token in options) and dangling:
            out.append(current)  # type: ignore[arg-type]
        if token in options:
            current, dangling = token, True
            continue
        if is_option:
            current, dangling = None, False
        elif current is not None:
            out.append(current)
            dangling = False
        out.append(token)
    if dangling:
        out.append(current)  # type: ignore[arg-type]
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _quiet_warnings() -> None:
    """Third-party deprecation notices and PEFT's Hub-lookup note are not the user's concern on the CLI."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)


def run_command_line(app: typer.Typer, argv: list[str]) -> None:
    """Run ``app`` on ``argv`` as the `mashup` command: third-party notices quiet, multi-value options expanded,
    and every error one line with its exit status (SystemExit)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with warnings.catch_warnings():
        _quiet_warnings()
        quiet_third_party()
        _run(app, expand_multi_value_options(argv))


def _usage_error(exc: Exception) -> None:
    """A usage error on one line, like every other error (click prints usage, a hint and the error on four)."""
    context = getattr(exc, "ctx", None)
    command = context.command_path if context is not None else "mashup"
    message = exc.format_message() if callable(getattr(exc, "format_message", None)) else str(exc)
    err.print(f"[red]error:[/red] {' '.join(message.split()).rstrip('.')}; see `{command} --help`", highlight=False,
              soft_wrap=True)


INTERRUPTED = 130  # the shell's exit status for SIGINT


def _run(app: typer.Typer, argv: list[str]) -> None:
    try:
        code = app(argv, prog_name="mashup", standalone_mode=False)
    except KeyboardInterrupt:  # where typer leaves it to us
        code = INTERRUPTED
    except MashupError as exc:
        err.print(f"[red]error:[/red] {exc.line()}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except ValidationError as exc:
        field, problem = first_problem(exc)
        err.print(f"[red]error:[/red] invalid value for {option_named(field, argv)}: {problem}; fix that option",
                  highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except OSError as exc:  # the file system said no (missing file, permissions, disk full): one line too
        where = f" in {exc.filename}" if exc.filename else ""
        err.print(f"[red]error:[/red] {exc.strerror or exc}{where}; check the path, its permissions and the free "
                  "disk space", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except (typer.Exit, typer.Abort) as exc:
        raise SystemExit(getattr(exc, "exit_code", 1)) from None
    except Exception as exc:
        # click's usage errors (typer vendors its own click, so match the interface, not the class): exit 2
        if isinstance(getattr(exc, "exit_code", None), int) and callable(getattr(exc, "show", None)):
            _usage_error(exc)
            raise SystemExit(exc.exit_code) from None
        raise
    # outside standalone mode typer *returns* an exit code (130 for Ctrl-C) instead of exiting with it: without
    # this, an interrupted command exited 0 and `mashup ... && next` went on
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == INTERRUPTED:
            err.print("[red]interrupted[/red]", highlight=False)
        raise SystemExit(code)
