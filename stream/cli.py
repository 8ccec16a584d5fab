"""The ``interest`` command: thin wrappers that load settings and call the modules that work.

TensorFlow is imported only by the commands that train or load a model, inside the
modules that need it, so ``interest --help`` and ``interest kafka status`` answer quickly.
"""

from __future__ import annotations

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

    bootstrap = broker.up(port=port, data_dir=data_dir, timeout_s=timeout, log=err.print)
    out.print(bootstrap)


@kafka_app.command("down")
def kafka_down(
    data_dir: Annotated[
        Path | None, typer.Option(help="Broker data directory given to `up`.")
    ] = None,
) -> None:
    """Stop the local Kafka broker cleanly."""

    stopped = broker.down(data_dir=data_dir)
    out.print("stopped" if stopped else "not running")


@kafka_app.command("status")
def kafka_status(
    data_dir: Annotated[
        Path | None, typer.Option(help="Broker data directory given to `up`.")
    ] = None,
) -> None:
    """Say whether the local broker runs, and where. Exit 1 when it does not run."""

    info = broker.status(data_dir=data_dir)
    if info is None:
        out.print("not running")
        raise typer.Exit(1)
    out.print(info.describe())


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
    out.print(inspect_user(settings, user_id, base_url=url, vectors=vectors))


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
