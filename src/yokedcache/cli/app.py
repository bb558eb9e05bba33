"""The ``yokedcache`` command group, its global options, configuration and exit codes.

Exit codes: 0 success; 1 error (failure, key not found, declined prompt); 2 usage or configuration error;
3 backend unreachable. Every failure is one line on stderr saying what failed and how to fix it; never a
traceback (``--log-level DEBUG`` logs it).

The CLI inspects a cache without changing what it measures: its caches run with ``fallback_enabled=False``
(an unreachable backend is an error, not a miss), no retries (fail fast; run again), no metrics exporters,
and no stats publication (the CLI's own lookups never show up in the fleet's counters).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from .. import __version__
from ..config import CacheConfig
from ..exceptions import CacheConnectionError, CacheError, CacheKeyError, ConfigValidationError
from ..policy.cache import YokedCache
from .output import err

logger = logging.getLogger("yokedcache.cli")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Failure(Exception):
    """End the command with ``code``; ``message`` (one line) goes to stderr unless already shown."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or "")
        self.code = code
        self.message = message


def fail(code: int, message: str | None = None) -> NoReturn:
    raise Failure(code, message)


class Session:
    """The global options of one invocation; builds the config and caches lazily (``--help`` needs none)."""

    def __init__(
        self,
        redis_url: str | None,
        config_file: str | None,
        key_prefix: str | None,
        log_level: str | None,
    ) -> None:
        self.options = {"redis_url": redis_url, "key_prefix": key_prefix, "log_level": log_level}
        self.config_file = config_file
        self._config: CacheConfig | None = None
        self._caches: list[YokedCache] = []

    @property
    def config(self) -> CacheConfig:
        """The user's effective config: defaults < ``YOKEDCACHE_*`` < ``--config-file`` < options."""
        if self._config is None:
            overrides = {name: value for name, value in self.options.items() if value is not None}
            if self.config_file is not None:
                self._config = CacheConfig.from_yaml(self.config_file, **overrides)
            else:
                self._config = CacheConfig(**overrides)
        return self._config

    def cache(self, **changes: Any) -> YokedCache:
        """A cache on the configured backend, set up for inspection (see the module docstring)."""
        config = self.config.replace(
            fallback_enabled=False,
            connection_retries=0,
            stats_publish_interval=0,
            enable_metrics=False,
            **changes,
        )
        if config.redis_url is None:
            err(
                "warning: no Redis URL configured (--redis-url, YOKEDCACHE_REDIS_URL or redis_url in "
                "--config-file): using an empty in-process memory cache"
            )
        cache = YokedCache(config)
        self._caches.append(cache)
        return cache

    def close(self) -> None:
        for cache in self._caches:
            try:
                cache.disconnect_sync()
            except Exception as exc:  # closing never changes the outcome
                logger.debug("closing the cache failed: %s", exc)
        self._caches.clear()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url", metavar="URL", help="Redis URL (beats YOKEDCACHE_REDIS_URL and the config file)."
)
@click.option(
    "--config-file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML file of CacheConfig fields (beats YOKEDCACHE_* variables).",
)
@click.option("--key-prefix", metavar="PREFIX", help="Key prefix (namespace) to work on.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Level of yokedcache's log messages on stderr.",
)
@click.version_option(__version__, "--version", prog_name="yokedcache")
@click.pass_context
def cli(
    ctx: click.Context,
    redis_url: str | None,
    config_file: str | None,
    key_prefix: str | None,
    log_level: str | None,
) -> None:
    """Inspect and manage a yokedcache cache.

    Global options go before the command; configuration comes from defaults, then YOKEDCACHE_*
    variables, then --config-file, then these options.
    """
    _configure_logging(log_level)
    session = Session(redis_url, config_file, key_prefix, log_level.upper() if log_level else None)
    ctx.obj = session
    ctx.call_on_close(session.close)


def _configure_logging(level: str | None) -> None:
    """yokedcache's log records go to stderr; the level is the config's ``log_level`` (set by the cache)."""
    package_logger = logging.getLogger("yokedcache")
    if not any(getattr(h, "yokedcache_cli", False) for h in package_logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.yokedcache_cli = True  # type: ignore[attr-defined]
        package_logger.addHandler(handler)
        package_logger.propagate = False
    if level:
        package_logger.setLevel(level.upper())


pass_session = click.make_pass_decorator(Session)


# --- exit codes ----------------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def unreachable_message(exc: BaseException) -> str:
    reason = _one_line(str(exc)).rstrip(".")
    return (
        f"error: cannot reach the cache backend: {reason}. Check that the server is running and that "
        "--redis-url / YOKEDCACHE_REDIS_URL / redis_url in --config-file points to it."
    )


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (``main`` exits with it)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    if not args:  # like --help, whatever click's version does with a bare group
        with click.Context(cli, info_name="yokedcache") as ctx:
            click.echo(cli.get_help(ctx))
        return EXIT_OK
    try:
        result = cli.main(args=args, prog_name="yokedcache", standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except Failure as exc:
        if exc.message:
            err(_one_line(exc.message))
        return exc.code
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "yokedcache"
        err(f"error: {_one_line(exc.format_message())} (see '{command} --help')")
        return EXIT_USAGE
    except click.ClickException as exc:
        err(f"error: {_one_line(exc.format_message())}")
        return exc.exit_code
    except click.Abort:
        err("Aborted")
        return EXIT_ERROR
    except CacheConnectionError as exc:
        logger.debug("backend unreachable", exc_info=True)
        err(unreachable_message(exc))
        return EXIT_UNREACHABLE
    except ConfigValidationError as exc:
        err(
            f"error: invalid configuration: {_one_line(str(exc))}. Fix the option, the --config-file "
            "entry or the YOKEDCACHE_* variable."
        )
        return EXIT_USAGE
    except CacheKeyError as exc:
        err(f"error: {_one_line(str(exc))}")
        return EXIT_USAGE
    except FileNotFoundError as exc:
        err(f"error: file not found: {exc.filename or exc}")
        return EXIT_USAGE
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the reader left; do not complain at exit
        return EXIT_OK
    except (CacheError, ImportError, OSError) as exc:
        logger.debug("command failed", exc_info=True)
        err(f"error: {_one_line(str(exc))}")
        return EXIT_ERROR
    except Exception as exc:
        logger.debug("unexpected error", exc_info=True)
        err(
            f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))} "
            "(run with --log-level DEBUG for details)"
        )
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``yokedcache``, ``python -m yokedcache``)."""
    sys.exit(run(argv))
