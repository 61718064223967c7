"""``scripts/stack``: up | down | status [--json] | env | free-ports | start | stop | restart."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ._errors import StackError
from ._processes import log
from ._stack import LocalStack, free_ports


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stack", description="Local Kafka (KRaft) + PostgreSQL for society-ingest, without Docker.",
        epilog="Ports: SOCIETY_KAFKA_PORT and SOCIETY_PG_PORT when set, else those the state dir's "
               "services were last started on (<state dir>/ports), else 19092 and 15432. Variables "
               "that disagree with a running service of the state dir are an error.")
    parser.add_argument("--state-dir", help="state dir (default $SOCIETY_STACK_DIR or <repo>/.stack)")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("up", help="start both services, wait until ready, print env lines")
    sub.add_parser("down", help="stop both services (data is kept)")
    st = sub.add_parser("status", help="show both services (exit 0 when both are up, 3 otherwise)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("env", help="print export lines for eval \"$(scripts/stack env)\"")
    sub.add_parser("free-ports", help="print SOCIETY_*_PORT exports, moved off ports used by others")
    for name in ("start", "restart"):
        p = sub.add_parser(name, help=f"{name} one service")
        p.add_argument("service", choices=("kafka", "postgres"))
    p = sub.add_parser("stop", help="stop one service")
    p.add_argument("service", choices=("kafka", "postgres"))
    p.add_argument("--kill", action="store_true",
                   help="crash-like stop: SIGKILL for kafka, immediate mode for postgres")
    return parser


def _print_status(st: dict) -> None:
    k, p = st["kafka"], st["postgres"]
    print(f"state dir  {st['state_dir']}")
    print(f"kafka      {k['state']:8} pid {k['pid'] or '-':<8} {k['bootstrap']}  log {k['log']}")
    print(f"postgres   {p['state']:8} pid {p['pid'] or '-':<8} {p['url']}  log {p['log'] or '-'}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        stack = LocalStack(args.state_dir)
        if args.cmd == "up":
            t0 = time.monotonic()
            stack.up()
            log(f"up in {time.monotonic() - t0:.1f} s (stop with: scripts/stack down)")
            sys.stdout.write(stack.env_lines())
        elif args.cmd == "down":
            stack.down()
        elif args.cmd == "env":
            sys.stdout.write(stack.env_lines())
        elif args.cmd == "free-ports":
            kafka, pg = free_ports(stack)
            print(f"export SOCIETY_KAFKA_PORT={kafka}\nexport SOCIETY_PG_PORT={pg}")
        elif args.cmd == "status":
            st = stack.status()
            if args.json:
                print(json.dumps(st, indent=2))
            else:
                _print_status(st)
            return 0 if st["kafka"]["state"] == st["postgres"]["state"] == "up" else 3
        elif args.cmd == "stop" and args.service == "kafka":
            stack.stop_kafka(kill=args.kill)
        elif args.cmd == "stop":
            stack.stop_postgres(mode="immediate" if args.kill else "fast")
        else:
            getattr(stack, f"{args.cmd}_{args.service}")()
    except StackError as e:
        print(f"stack: error: {e}", file=sys.stderr)
        if e.detail:
            print(e.detail, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
