"""The `roger` command line (also ``python -m roger``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pydantic import ValidationError

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(process)6d %(name)s: %(message)s"


def _settings_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (flags override ROGER_* env, which overrides the file)")
    g.add_argument("--config", metavar="PATH", help="TOML settings file (default: ./roger.toml)")
    g.add_argument("--broker-url", help="AMQP URL, e.g. amqp://guest:guest@localhost:5672//")
    g.add_argument("--partitions", type=json.loads, metavar="JSON",
                   help='partitions to serve, e.g. \'{"myapp": {"default": 10}}\'')
    g.add_argument("--imports", type=lambda s: s.split(","), metavar="MOD,MOD",
                   help="modules defining job classes")
    g.add_argument("--node-name")
    g.add_argument("--shutdown-timeout", type=float, metavar="SECONDS")
    g.add_argument("--callbacks", metavar="MODULE:ATTR")
    g.add_argument("--queue-type", choices=["quorum", "classic"])
    g.add_argument("--state-dir", metavar="PATH")
    g.add_argument("--control-socket", metavar="PATH")


def load_settings(args: argparse.Namespace) -> Any:
    from roger.settings import Settings

    given = {k: v for k, v in vars(args).items()
             if v is not None and k in Settings.model_fields}
    return Settings.load(config=args.config, **given)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roger", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a node (blocks; SIGTERM or Ctrl-C stops it)",
                         description="Run a node serving the configured partitions.\n\n"
                         "example: roger run --partitions '{\"myapp\": {\"default\": 10}}' "
                         "--imports myapp.jobs", formatter_class=argparse.RawTextHelpFormatter)
    _settings_flags(run)

    demo = sub.add_parser("demo", help="a node serving partition 'demo' and a producer feeding it")
    demo.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    demo.add_argument("--rate", type=float, default=20.0, help="jobs per second (default 20)")
    demo.add_argument("--workers", type=int, default=4)

    enq = sub.add_parser("enqueue", help="enqueue a job by its registered name",
                         description="example: roger enqueue myapp myapp.jobs:SendInvoice "
                         "'{\"id\": 7}' --imports myapp.jobs")
    enq.add_argument("partition")
    enq.add_argument("job", help="registered job name, module:QualName")
    enq.add_argument("args", type=json.loads, help="JSON arguments")
    enq.add_argument("--queue")
    _settings_flags(enq)

    buried = sub.add_parser("buried", help="list or re-enqueue buried jobs")
    buried.add_argument("action", choices=["list", "retry"])
    buried.add_argument("partition")
    buried.add_argument("queue", nargs="?", default="default")
    buried.add_argument("--limit", type=int, default=100)
    buried.add_argument("--json", action="store_true")
    _settings_flags(buried)

    purge = sub.add_parser("purge", help="delete every queued job of a queue")
    purge.add_argument("partition")
    purge.add_argument("queue", nargs="?", default="default")
    _settings_flags(purge)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=LOG_FORMAT, stream=sys.stderr)
    try:
        return _dispatch(args)
    except ValidationError as e:
        from roger.settings import describe_validation_error

        print(f"roger: invalid settings: {describe_validation_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from roger.errors import RogerError

        if not isinstance(e, RogerError | ValueError | OSError):
            raise
        print(f"roger: {e}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    import roger

    if args.command == "demo":
        from roger import demo

        return demo.main(args.seconds, args.rate, args.workers)
    settings = load_settings(args)
    roger.configure(settings)
    if args.command == "run":
        roger.Node(settings).run()
        return 0
    if args.command == "enqueue":
        from roger import registry

        registry.import_modules(settings.imports)
        job = registry.resolve(args.job).create(args.args).enqueue(args.partition, args.queue)
        print(job.id)
        return 0
    if args.command == "buried":
        if args.action == "retry":
            print(f"re-enqueued {roger.retry_buried(args.partition, args.queue)} jobs")
            return 0
        jobs = roger.info.buried_jobs(args.partition, args.queue, limit=args.limit)
        rows = [{"id": j.id, "name": j.name, "retry_count": j.retry_count, "args": j.args}
                for j in jobs]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['id']}  {r['name']}  retries={r['retry_count']}  "
                      f"{json.dumps(r['args'])[:60]}")
            print(f"({len(rows)} buried jobs)")
        return 0
    if args.command == "purge":
        print(f"purged {roger.purge(args.partition, args.queue)} jobs")
        return 0
    raise AssertionError(args.command)
