"""The `roger` command line (also ``python -m roger``).

Run a node, drive a running node through its control socket, and look at or
act on queues cluster-wide. Tables by default, --json for scripts; the exit
status is 0 on success, 1 on an error, 2 on a usage or settings error.
Every command explains itself with --help.

examples:
  roger run --partitions '{"myapp": {"default": 10}}' --imports myapp.jobs
  roger ctl status
  roger ctl reconfigure_partition myapp '{"default": 4}'
  roger info partitions
  roger pause myapp default
  roger rejected list myapp default
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from roger.cli.format import (
    jobs_text,
    partitions_text,
    periodic_text,
    rejected_text,
    running_text,
    status_text,
    to_json,
)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(process)6d %(name)s: %(message)s"

Handler = Callable[[argparse.Namespace], int]

# `roger ctl` commands: cmd -> (what it does, example arguments).
CTL_COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("the node's tree: partitions, queues, consumer and worker pids, "
               "waiting partitions, restart counts", ""),
    "start_partition": ("start serving a partition on this node; returns once its "
                        "consumers are subscribed", "myapp '{\"default\": 4}'"),
    "reconfigure_partition": ("set a partition's queues on this node; the dict is complete: "
                              "queues left out stop, 0 workers stops consuming",
                              "myapp '{\"default\": 8, \"reports\": 1}'"),
    "stop_partition": ("stop serving a partition on this node (its running jobs finish or "
                       "are requeued)", "myapp"),
    "restart_partition": ("restart one partition's processes; other partitions are not "
                          "touched, its jobs in flight finish or are requeued", "myapp"),
    "pause": ("stop consuming a queue on every node (kept across restarts)", "myapp default"),
    "resume": ("consume a paused queue again on every node", "myapp default"),
    "cancel": ("cancel a queued or running job, on whichever node runs it",
               "myapp 6f1c2b0e9d8a7f6e5d4c3b2a19080706"),
    "shutdown": ("shut the node down gracefully (running jobs get shutdown_timeout)", ""),
}
ARG_HELP = {
    "partition": "partition name",
    "queues": 'JSON object of queue name to workers, e.g. \'{"default": 4}\'',
    "queue": "queue name, e.g. default",
    "job_id": "the job's id (as printed by `roger enqueue` or `roger info running`)",
}


class NotAvailable(Exception):
    """A feature this build of roger does not have (yet)."""


# ------------------------------------------------------------------ parsing


def _settings_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (flags override ROGER_* env, which overrides the file)")
    g.add_argument("--config", metavar="PATH", help="TOML settings file (default: ./roger.toml)")
    g.add_argument("--broker-url", help="AMQP URL, e.g. amqp://guest:guest@localhost:5672//")
    g.add_argument("--partitions", type=json.loads, metavar="JSON",
                   help='partitions to serve, e.g. \'{"myapp": {"default": 10}}\'')
    g.add_argument("--imports", type=lambda s: s.split(","), metavar="MOD,MOD",
                   help="modules defining job classes")
    g.add_argument("--periodic", type=json.loads, metavar="JSON",
                   help='periodic jobs, e.g. \'[{"name": "nightly", "cron": "0 3 * * *", '
                        '"job": "myapp.jobs:Report", "partition": "myapp"}]\'')
    g.add_argument("--node-name")
    g.add_argument("--shutdown-timeout", type=float, metavar="SECONDS")
    g.add_argument("--callbacks", metavar="MODULE:ATTR")
    g.add_argument("--queue-type", choices=["quorum", "classic"])
    g.add_argument("--state-dir", metavar="PATH")
    g.add_argument("--control-socket", metavar="PATH")
    # The page's token has no flag: a command line is visible to every user
    # (ps); it comes from ROGER_HTTP_TOKEN or the settings file.
    g.add_argument("--http-port", type=int, metavar="PORT",
                   help="serve the status page on this port (actions need http_token)")
    g.add_argument("--http-host", metavar="ADDRESS",
                   help="address of the status page (default 127.0.0.1)")
    g.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics at http://<metrics-host>:PORT/metrics")
    g.add_argument("--metrics-host", metavar="ADDRESS", help="default 127.0.0.1")


def load_settings(args: argparse.Namespace) -> Any:
    from roger.settings import Settings

    given = {k: v for k, v in vars(args).items()
             if v is not None and k in Settings.model_fields}
    return Settings.load(config=args.config, **given)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"default": 4}\'')
    return value


def _common(json_output: bool = True) -> argparse.ArgumentParser:
    """Flags every data command shares: --json and the settings."""
    p = argparse.ArgumentParser(add_help=False)
    if json_output:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _settings_flags(p)
    return p


def _command(sub: Any, name: str, summary: str, examples: list[str], handler: Handler,
             parents: Sequence[argparse.ArgumentParser] = (), **kw: Any
             ) -> argparse.ArgumentParser:
    text = summary[0].upper() + summary[1:] + "."
    if examples:
        text += "\n\nexample" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(
            f"  {e}" for e in examples)
    p = sub.add_parser(name, help=summary, description=text, parents=list(parents),
                       formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    description = (__doc__ or "").replace("``", "").replace("`", "")
    p = argparse.ArgumentParser(prog="roger", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_ctl(sub)
    _add_enqueue(sub)
    _add_info(sub)
    _add_cluster_ops(sub)
    _add_periodic(sub)
    _add_queue_admin(sub)
    _add_demo(sub)
    return p


def _add_demo(sub: Any) -> None:
    demo = _command(sub, "demo", "a node serving partition 'demo' and a producer feeding it",
                    ["roger demo --seconds 10"], _cmd_demo)
    demo.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    demo.add_argument("--rate", type=float, default=20.0, help="jobs per second (default 20)")
    demo.add_argument("--workers", type=int, default=4)


def _add_run(sub: Any) -> None:
    _command(sub, "run", "run a node (blocks; SIGTERM or Ctrl-C stops it gracefully)",
             ["roger run --partitions '{\"myapp\": {\"default\": 10}}' --imports myapp.jobs"],
             _cmd_run, parents=[_common(json_output=False)])


def _add_ctl(sub: Any) -> None:
    from roger.control import COMMANDS

    ctl = _command(sub, "ctl", "control a running node through its control socket",
                   ["roger ctl status", "roger ctl reconfigure_partition myapp "
                    "'{\"default\": 4}'", "roger ctl pause myapp default"], _cmd_ctl,
                   epilog="The node is found by --control-socket, else by --node-name\n"
                   "(<state_dir>/<node_name>.sock), else as the only live node in state_dir.")
    cmds = ctl.add_subparsers(dest="ctl_command", required=True, metavar="CTL_COMMAND")
    common = _common()
    common.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="how long to wait for the node's answer "
                        "(default: 130 + shutdown_timeout)")
    for cmd, (summary, example) in CTL_COMMANDS.items():
        c = _command(cmds, cmd, summary, [f"roger ctl {cmd} {example}".rstrip()], _cmd_ctl,
                     parents=[common], aliases=[cmd.replace("_", "-")] if "_" in cmd else [])
        for field in COMMANDS[cmd]:
            c.add_argument(field, help=ARG_HELP[field],
                           type=_json_object if field == "queues" else str)


def _add_enqueue(sub: Any) -> None:
    enq = _command(sub, "enqueue", "enqueue a job by its registered name; prints its id",
                   ["roger enqueue myapp myapp.jobs:SendInvoice '{\"id\": 7}' "
                    "--imports myapp.jobs",
                    "roger enqueue myapp myapp.jobs:SendInvoice '{\"id\": 7}' --delay 600"],
                   _cmd_enqueue, parents=[_common(json_output=False)])
    enq.add_argument("partition")
    enq.add_argument("job", help="registered job name, module:QualName")
    enq.add_argument("args", type=json.loads, help="JSON arguments")
    enq.add_argument("--queue")
    enq.add_argument("--delay", type=float, help="run it no earlier than this many seconds "
                                                   "from now")


def _add_info(sub: Any) -> None:
    info = _command(sub, "info", "cluster-wide information, gathered from every live node",
                    ["roger info partitions", "roger info running myapp",
                     "roger info queued myapp default --limit 20"], _cmd_info)
    what = info.add_subparsers(dest="what", required=True, metavar="WHAT")
    common = _common()
    _command(what, "partitions", "what every live node serves: queues, workers, paused, "
             "depth", ["roger info partitions --json"], _cmd_info, parents=[common])
    running = _command(what, "running", "jobs running now on every node",
                       ["roger info running myapp"], _cmd_info, parents=[common])
    running.add_argument("partition", nargs="?", help="only this partition")
    queued = _command(what, "queued", "jobs waiting in a queue, oldest first (not consumed)",
                      ["roger info queued myapp default --limit 20"], _cmd_info,
                      parents=[common])
    queued.add_argument("partition")
    queued.add_argument("queue", nargs="?", default="default")
    queued.add_argument("--limit", type=int, default=100)


def _add_cluster_ops(sub: Any) -> None:
    common = _common()
    for cmd in ("cancel", "pause", "resume"):
        summary, example = CTL_COMMANDS[cmd]
        c = _command(sub, cmd, summary, [f"roger {cmd} {example}"], _cmd_cluster_op,
                     parents=[common])
        c.add_argument("partition", help=ARG_HELP["partition"])
        second = "job_id" if cmd == "cancel" else "queue"
        c.add_argument(second, help=ARG_HELP[second])


def _add_periodic(sub: Any) -> None:
    periodic = _command(sub, "periodic", "periodic jobs of the cluster with their last and "
                        "next run", ["roger periodic", "roger periodic myapp --json"],
                        _cmd_periodic, parents=[_common()])
    periodic.add_argument("partition", nargs="?", help="only this partition")


def _add_queue_admin(sub: Any) -> None:
    buried = _command(sub, "buried", "list or re-enqueue buried jobs",
                      ["roger buried list myapp default", "roger buried retry myapp default"],
                      _cmd_buried, parents=[_common()])
    buried.add_argument("action", choices=["list", "retry"])
    buried.add_argument("partition")
    buried.add_argument("queue", nargs="?", default="default")
    buried.add_argument("--limit", type=int, default=100)
    rejected = _command(sub, "rejected", "list messages that were not valid jobs, or replay "
                        "them (each goes back to its queue once; still invalid: rejected again)",
                        ["roger rejected list myapp default",
                         "roger rejected replay myapp default"],
                        _cmd_rejected, parents=[_common()])
    rejected.add_argument("action", choices=["list", "replay"])
    rejected.add_argument("partition")
    rejected.add_argument("queue", nargs="?", default="default")
    rejected.add_argument("--limit", type=int, default=100)
    purge = _command(sub, "purge", "delete every queued job of a queue",
                     ["roger purge myapp default"], _cmd_purge,
                     parents=[_common(json_output=False)])
    purge.add_argument("partition")
    purge.add_argument("queue", nargs="?", default="default")


# ----------------------------------------------------------------- running


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=LOG_FORMAT, stream=sys.stderr)
    try:
        return args.handler(args)
    except ValidationError as e:
        from roger.settings import describe_validation_error

        return _fail(f"invalid settings: {describe_validation_error(e)}", 2)
    except KeyboardInterrupt:
        return 130
    except NotAvailable as e:
        return _fail(f"{e} is not available in this version of roger")
    except Exception as e:
        from roger.errors import RogerError

        if not isinstance(e, RogerError | ValueError | OSError):
            raise
        return _fail(str(e))


def _fail(message: str, code: int = 1) -> int:
    print(f"roger: {message}", file=sys.stderr)
    return code


def _configured(args: argparse.Namespace) -> Any:
    import roger

    return roger.configure(load_settings(args))


def _feature(owner: Any, name: str, label: str) -> Callable[..., Any]:
    """`owner.<name>`, looked up now: older builds may not have it."""
    fn = getattr(owner, name, None)
    if not callable(fn):
        raise NotAvailable(label)
    return fn


def _cmd_run(args: argparse.Namespace) -> int:
    import roger

    roger.Node(_configured(args)).run()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from roger.cli import demo

    return demo.main(args.seconds, args.rate, args.workers)


def _cmd_ctl(args: argparse.Namespace) -> int:
    from roger import control

    settings = _configured(args)
    cmd = args.ctl_command.replace("-", "_")
    fields = {name: getattr(args, name) for name in control.COMMANDS[cmd]}
    timeout = args.timeout if args.timeout is not None else control.client_timeout(
        settings.shutdown_timeout)
    with control.Client(control.find_socket(settings), timeout=timeout) as client:
        reply = client.request(cmd, **fields)
    if args.json:
        print(to_json(reply))
    elif "running" in reply:
        print(status_text(reply))
    elif cmd == "shutdown":
        print("the node is shutting down")
    else:
        print("ok" if reply.get("result") is None else f"ok: {reply['result']}")
    return 0


def _cmd_enqueue(args: argparse.Namespace) -> int:
    from roger import registry

    settings = _configured(args)
    registry.import_modules(settings.imports)
    job = registry.resolve(args.job).create(args.args).enqueue(args.partition, args.queue,
                                                               delay=args.delay)
    print(job.id)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import roger

    _configured(args)
    if args.what == "partitions":
        answer = _feature(roger.info, "partitions", "info partitions")()
        print(to_json(answer) if args.json else partitions_text(answer))
    elif args.what == "running":
        answer = _feature(roger.info, "running_jobs", "info running")(args.partition)
        print(to_json(answer) if args.json else running_text(answer))
    else:
        jobs = _feature(roger.info, "queued_jobs", "info queued")(
            args.partition, args.queue, args.limit)
        print(to_json(jobs) if args.json else jobs_text(jobs, "queued jobs"))
    return 0


def _cmd_periodic(args: argparse.Namespace) -> int:
    import roger

    _configured(args)
    entries = _feature(roger.info, "periodic", "periodic")(args.partition)
    print(to_json(entries) if args.json else periodic_text(entries))
    return 0


def _cmd_cluster_op(args: argparse.Namespace) -> int:
    import roger

    _configured(args)
    fn = _feature(roger, args.command, args.command)
    second = args.job_id if args.command == "cancel" else args.queue
    result = fn(args.partition, second)
    if args.json:
        print(to_json({"ok": True, "result": result}))
    else:
        done = {"cancel": "cancelled job", "pause": "paused", "resume": "resumed"}
        print(f"{done[args.command]} {args.partition} {second}")
    return 0


def _cmd_buried(args: argparse.Namespace) -> int:
    import roger

    return _side_queue(args, "retry", roger.retry_buried, "re-enqueued {} jobs",
                       roger.info.buried_jobs, lambda jobs: jobs_text(jobs, "buried jobs"))


def _cmd_rejected(args: argparse.Namespace) -> int:
    import roger

    return _side_queue(args, "replay", roger.replay_rejected, "replayed {} messages",
                       roger.info.rejected_jobs, rejected_text)


def _side_queue(args: argparse.Namespace, move_action: str, move: Callable[[str, str], int],
                moved: str, listing: Callable[..., list], text: Callable[[list], str]) -> int:
    """`buried` and `rejected`: send the queue's messages back, or list them."""
    _configured(args)
    if args.action == move_action:
        print(moved.format(move(args.partition, args.queue)))
        return 0
    entries = listing(args.partition, args.queue, limit=args.limit)
    print(to_json(entries) if args.json else text(entries))
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    import roger

    _configured(args)
    print(f"purged {roger.purge(args.partition, args.queue)} jobs")
    return 0
