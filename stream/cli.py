"""The ``interest`` command: thin wrappers that load settings and call the modules that work.

TensorFlow is imported only by the commands that train or load a model, inside the
modules that need it, so ``interest --help`` and ``interest kafka status`` answer quickly.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from models.evaluation.evaluate import evaluate_command
from models.training.train import train_command
from stream.config import Settings, load_settings
from stream.core.errors import InterestStreamError, SettingsError
from stream.tools import broker
from stream.tools.demo import run_demo
from stream.tools.producer import produce_file
from stream.tools.tail import inspect_user, tail_recommendations
from stream.worker.main import run_worker

app = typer.Typer(
    name="interest",
    help="interest-stream: real-time user-interest strength from Kafka events to recommendations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
kafka_app = typer.Typer(
    help="A local single-node Apache Kafka (KRaft) for development and tests; no Docker needed.",
    no_args_is_help=True,
)
app.add_typer(kafka_app, name="kafka")

err = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML settings file (also INTEREST_CONFIG).", show_default=False
    ),
]
BootstrapOpt = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        "-b",
        help="Kafka bootstrap servers (INTEREST_KAFKA_BOOTSTRAP).",
        show_default=False,
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line, no traceback, and exit non-zero."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def say(text: str) -> None:
    """One plain line on stdout: no wrapping, no markup (paths may hold brackets)."""
    out.print(text, soft_wrap=True, markup=False, highlight=False)


def note(text: str) -> None:
    """One plain line on stderr (progress of a command whose stdout is its result)."""
    err.print(text, soft_wrap=True, markup=False, highlight=False)


def client_logging() -> None:
    """Warnings (e.g. librdkafka's, rate-limited) as one stderr line each, for the commands
    that are Kafka clients but not a worker (which configures its own logging)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    return load_settings(config, overrides)


# --------------------------------------------------------------------------- kafka


@kafka_app.command("up")
def kafka_up(
    port: Annotated[int, typer.Option(help="Broker port on 127.0.0.1.")] = 9092,
    data_dir: Annotated[Path | None, typer.Option(help="Broker data and log directory.")] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the broker to accept connections.")
    ] = 90.0,
) -> None:
    """Start a local Kafka broker in the background and print its bootstrap address."""

    bootstrap = broker.up(port=port, data_dir=data_dir, timeout_s=timeout, log=note)
    out.print(bootstrap)


@kafka_app.command("down")
def kafka_down(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Broker data directory given to `up`; default: the one running."),
    ] = None,
    stop_all: Annotated[
        bool, typer.Option("--all", help="Stop every local broker `up` started.")
    ] = False,
) -> None:
    """Stop a local Kafka broker cleanly: the one `up` started, whatever its --data-dir.

    With several running, name one with --data-dir or stop them all with --all (without
    either, none is stopped and they are listed, exit 1).
    """
    if stop_all:
        if data_dir is not None:
            fail("--all and --data-dir exclude each other", 2)
        stopped = broker.down_all()
    else:
        one = broker.down(data_dir=data_dir)
        stopped = [one] if one is not None else []
    for info in stopped:
        say(f"stopped the broker at {info.bootstrap} (pid {info.pid}, data in {info.data_dir})")
    if not stopped:
        where = f" with data in {data_dir.resolve()}" if data_dir is not None else ""
        say(f"not running: no local broker{where}")


@kafka_app.command("status")
def kafka_status(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Broker data directory given to `up`; default: every one running."),
    ] = None,
) -> None:
    """Say which local brokers run, and where (one line each). Exit 1 when none does."""
    if data_dir is not None:
        info = broker.status(data_dir=data_dir.resolve())
        running = [info] if info is not None else []
    else:
        running = broker.running_brokers()
    if not running:
        out.print("not running")
        raise typer.Exit(1)
    for info in running:
        say(info.describe())


@kafka_app.command(
    "tool",
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    },
)
def kafka_tool(
    name: Annotated[
        str,
        typer.Argument(
            help=f"The tool: {', '.join(broker.TOOLS)} (as bin/kafka-NAME.sh).",
            show_default=False,
        ),
    ],
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="The tool's own arguments (its --help lists them).", show_default=False
        ),
    ] = None,
) -> None:
    """Run one of Kafka's command-line tools from the broker's jars (no bin/ scripts needed).

    e.g. interest kafka tool topics --bootstrap-server 127.0.0.1:9092 --list

    Exits with the tool's exit code; `interest kafka tool NAME --help` shows the tool's help.
    """
    raise typer.Exit(broker.run_tool(name, list(args or ()), log=note))


# --------------------------------------------------------------------------- stream


@app.command()
def worker(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    web_port: Annotated[
        int | None, typer.Option(help="HTTP port (INTEREST_WEB_PORT).", show_default=False)
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="State directory (INTEREST_DATA_DIR).", show_default=False)
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="Model directory (INTEREST_MODEL_DIR).", show_default=False)
    ] = None,
) -> None:
    """Run a stream worker; many workers with one app id form one consumer group."""
    settings = settings_from(
        config, kafka_bootstrap=bootstrap, web_port=web_port, data_dir=data_dir, model_dir=model_dir
    )
    raise typer.Exit(run_worker(settings))


@app.command()
def produce(
    file: Annotated[
        Path,
        typer.Argument(
            help="Event file: CSV (Taobao, RetailRocket, generic with header) or JSON lines.",
            exists=True,
            dir_okay=False,
        ),
    ],
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Events per second; default: as fast as possible.", show_default=False),
    ] = None,
    speedup: Annotated[
        float | None,
        typer.Option(
            help="Replay event time this many times faster than real time.", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Stop after this many events.", show_default=False)
    ] = None,
    file_format: Annotated[
        str, typer.Option("--format", help="auto, taobao, retailrocket, csv or jsonl.")
    ] = "auto",
    columns: Annotated[
        str | None,
        typer.Option(
            help="Generic CSV column mapping, e.g. 'user_id=visitor,item_id=sku,ts=time'.",
            show_default=False,
        ),
    ] = None,
    now: Annotated[
        bool,
        typer.Option(
            "--now/--keep-time", help="Shift event times so the file ends now (default keeps them)."
        ),
    ] = False,
    topic: Annotated[
        str | None, typer.Option(help="Topic (INTEREST_TOPIC_EVENTS).", show_default=False)
    ] = None,
) -> None:
    """Replay an event file into the events topic, keyed by user id, with a progress bar."""
    settings = settings_from(config, kafka_bootstrap=bootstrap, topic_events=topic)
    client_logging()
    report = produce_file(
        settings,
        file,
        fmt=file_format,
        columns=columns,
        rate=rate,
        speedup=speedup,
        limit=limit,
        shift_to_now=now,
    )
    out.print(report.describe())
    if report.failed:
        raise typer.Exit(1)


@app.command()
def tail(
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning/--from-end", help="Start at the oldest or the newest message."
        ),
    ] = False,
    user: Annotated[
        list[str] | None, typer.Option(help="Only these users (repeatable).", show_default=False)
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print JSON lines instead of a table.")
    ] = False,
    max_messages: Annotated[
        int | None, typer.Option(help="Exit after this many messages.", show_default=False)
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Exit after this many idle seconds.", show_default=False)
    ] = None,
) -> None:
    """Follow the recommendations topic and print each message."""
    settings = settings_from(config, kafka_bootstrap=bootstrap)
    client_logging()
    tail_recommendations(
        settings,
        from_beginning=from_beginning,
        users=set(user or ()),
        json_lines=json_lines,
        max_messages=max_messages,
        idle_timeout_s=timeout,
    )


@app.command()
def inspect(
    user_id: Annotated[str, typer.Argument(help="The user id.")],
    config: ConfigOpt = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Worker base URL; default http://INTEREST_WEB_HOST:INTEREST_WEB_PORT.",
            show_default=False,
        ),
    ] = None,
    vectors: Annotated[bool, typer.Option(help="Include the interest vectors.")] = False,
) -> None:
    """Show a user's interest state and last recommendations, from the worker that owns it."""
    settings = settings_from(config)
    say(inspect_user(settings, user_id, base_url=url, vectors=vectors))


# --------------------------------------------------------------------------- models


@app.command()
def train(
    events: Annotated[
        list[Path],
        typer.Argument(help="Event files (formats as for `produce`).", exists=True, dir_okay=False),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Model directory; a new integer version is added.")
    ] = Path("models-out"),
    config: ConfigOpt = None,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs for the network.", show_default=False)
    ] = None,
    folds: Annotated[int, typer.Option(help="k-fold cross-validation over users (0: none).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Train item embeddings and the interest-strength network, and export a model version."""
    settings = settings_from(config)
    train_command(settings, events, out_dir, epochs=epochs, folds=folds, seed=seed)


@app.command()
def evaluate(
    events: Annotated[
        list[Path],
        typer.Argument(help="Event files in any supported format.", exists=True, dir_okay=False),
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where metrics.json, report.md and plots go.")
    ] = Path("eval-out"),
    config: ConfigOpt = None,
    cut: Annotated[
        float,
        typer.Option(help="Cut at this quantile of event times (0-1) or an epoch-ms timestamp."),
    ] = 0.7,
    tune: Annotated[
        bool, typer.Option(help="Search half-lives and weights on a validation window first.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Replay an event log in time order and compare methods on what users do next."""
    settings = settings_from(config)
    evaluate_command(settings, events, out_dir, cut=cut, tune=tune, seed=seed)


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    config: ConfigOpt = None,
    users: Annotated[int, typer.Option(help="Synthetic users to simulate.")] = 200,
    events: Annotated[
        int, typer.Option(help="Synthetic events: as many for training, as many replayed.")
    ] = 6_000,
    rate: Annotated[float, typer.Option(help="Replay rate, events per second.")] = 500.0,
    work_dir: Annotated[
        Path, typer.Option(help="Where the demo keeps broker, state and model.")
    ] = Path(".interest/demo"),
) -> None:
    """Everything end to end on a generated stream: broker, worker, replay, live recommendations."""
    settings = settings_from(config)
    client_logging()
    sys.exit(run_demo(settings, users=users, events=events, rate=rate, work_dir=work_dir))


def main() -> None:
    """Run a command; a project error ends it with one line and no traceback (settings: 2)."""
    try:
        app()
    except SettingsError as exc:
        fail(str(exc), 2)
    except InterestStreamError as exc:
        fail(str(exc), 1)


if __name__ == "__main__":
    main()
