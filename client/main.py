"""`cloud-engine <noun> <verb>`: the client commands, over HTTP only.

The nouns and verbs come from the verb table generated from the OpenAPI
document (client/verbs.py), so every operation of the API is a command
without one written by hand; what is hand-written is how to log in, wait
for an operation, follow events and print. Only the parser of the noun
given is built (start-up is the target: docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from cloud_engine.client import config, output
from cloud_engine.client.http import (
    OK,
    OPERATION_FAILED,
    REFUSED,
    USAGE,
    Client,
    ClientError,
)
from cloud_engine.client.verbs import VERBS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXTRA = ("login", "events", "completion", "console")
# What `<noun> <verb>` the client answers; `token create` is also the
# server-side bootstrap command (runner/token_cli.py), see handles().
NOUNS = tuple(VERBS)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
FORMATS = ("table", "json", "yaml")


def handles(argv: Sequence[str]) -> bool:
    """Whether the client answers this command line (the runner's hook)."""
    if not argv:
        return False
    word = argv[0]
    if word in EXTRA:
        return True
    if word != "token":
        return word in NOUNS
    # `token create --role R --account A` on the server's machine writes the
    # token table directly (the first admin token has nobody to ask for it);
    # with a profile, or for list/revoke, it goes to the API like any noun.
    if "--data-dir" in argv:
        return False
    local = len(argv) > 1 and argv[1] == "create"
    return not local or config.configured(_profile_option(argv))


def _profile_option(argv: Sequence[str]) -> str | None:
    for i, word in enumerate(argv):
        if word == "--profile" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--profile="):
            return word.split("=", 1)[1]
    return None


# Parsers --------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", help="the profile to use (CLOUD_ENGINE_PROFILE)")
    common.add_argument(
        "-o", "--output", choices=FORMATS, default="table", help="table (default), json or yaml"
    )
    return common


def _list_of(kind: str) -> Any:
    item = int if kind == "list-int" else str

    def parse(text: str) -> list[Any]:
        return [item(x) for x in text.split(",") if x != ""]

    return parse


def _add_field(parser: argparse.ArgumentParser, f: dict[str, Any]) -> None:
    flag, kind = "--" + f["flag"], f["kind"]
    dest = "body:" + ".".join(f["path"])
    help_text = (f["help"] or "") + (" (required)" if f["required"] else "")
    if kind == "bool":
        parser.add_argument(
            flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
    elif kind.startswith("list-"):
        parser.add_argument(
            flag,
            dest=dest,
            type=_list_of(kind),
            action="extend",
            metavar="A[,B...]",
            help=help_text + " (repeat or comma-separate)",
        )
    elif kind == "json":
        parser.add_argument(flag, dest=dest, type=json.loads, metavar="JSON", help=help_text)
    else:
        parser.add_argument(
            flag,
            dest=dest,
            type={"int": int, "float": float}.get(kind, str),
            choices=f["choices"],
            help=help_text,
        )


def _noun_parser(prog: str, noun: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{prog} {noun}", description=f"{noun} commands")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    common = _common()
    for verb, spec in VERBS[noun].items():
        p = verbs.add_parser(
            verb, help=spec["summary"], parents=[common], description=spec["summary"]
        )
        if "{id}" in spec["path"]:
            p.add_argument("id", help=f"the {noun}'s id (or its name, when unique)")
        for q in spec["query"]:
            option = "--" + q["name"].replace("_", "-")
            kind = {"int": int}.get(q["kind"], str)
            p.add_argument(option, dest="query:" + q["name"], type=kind, help=q["help"])
        if verb == "list":
            p.add_argument("--all", action="store_true", help="every page, not only the first")
        if verb == "events":
            p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
        for f in spec["body"]:
            _add_field(p, f)
        if spec["command"]:
            p.add_argument(
                "--json",
                dest="raw_body",
                type=json.loads,
                metavar="BODY",
                help="the request body as JSON; options override its fields",
            )
            p.add_argument("--idempotency-key", help="retry-safe key (default: a new one)")
            if spec["operation"]:
                p.add_argument(
                    "--wait",
                    "-w",
                    action="store_true",
                    help="follow the operation's steps until it finishes",
                )
    return parser


def _top_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    login = sub.add_parser("login", help="store an API URL and token in a profile")
    login.add_argument("url", help="the API, e.g. http://127.0.0.1:8080")
    login.add_argument("--profile", default=None, help="profile name (default: 'default')")
    login.add_argument(
        "--token-stdin", action="store_true", help="read the token from stdin instead of prompting"
    )
    events = sub.add_parser(
        "events", help="a resource's events (any type), --follow for new ones", parents=[_common()]
    )
    events.add_argument("id", help="the resource's id")
    events.add_argument("--type", choices=NOUNS, help="the resource's noun (else it is looked up)")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    completion = sub.add_parser("completion", help="a shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh"))
    return parser


def register_help(sub: Any) -> None:
    """Lists the client commands in the runner's `cloud-engine --help`."""
    for word, text in (
        ("login", "client: store an API URL and token (a profile)"),
        ("events", "client: a resource's events, --follow"),
        ("completion", "client: bash/zsh completion script"),
    ):
        sub.add_parser(word, help=text, add_help=False)
    for noun in NOUNS:
        if noun != "token":
            sub.add_parser(noun, help=f"client: {', '.join(VERBS[noun])}", add_help=False)


# Running --------------------------------------------------------------------------


def main(argv: Sequence[str], prog: str = "cloud-engine") -> int:
    argv = list(argv)
    if argv[0] == "console":  # a VM's serial console (client/console.py)
        from cloud_engine.client import console

        return console.main(argv[1:])
    try:
        if argv[0] in NOUNS:
            args = _noun_parser(prog, argv[0]).parse_args(argv[1:])
            return _run_verb(argv[0], args)
        args = _top_parser(prog).parse_args(argv)
        if args.command == "login":
            return _login(args)
        if args.command == "events":
            return _events(args)
        from cloud_engine.client.completion import script

        print(script(args.shell, prog))
        return OK
    except ClientError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.code
    except config.ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `| head`: the reader left; nothing more to say, and no traceback.
        sys.stderr.close()
        return OK


def _client(args: argparse.Namespace) -> Client:
    return Client(config.resolve(args.profile))


def _login(args: argparse.Namespace) -> int:
    if args.token_stdin or not sys.stdin.isatty():
        token = sys.stdin.readline().strip()
    else:
        import getpass

        token = getpass.getpass("token: ").strip()
    if not token:
        raise ClientError("no token given", USAGE)
    name = args.profile or "default"
    client = Client(config.Profile(name=name, url=args.url, token=token))
    # Any authenticated read proves the URL and the token (zones: everyone
    # may read the catalog).
    client.request("GET", "/v1/zones", query={"limit": 1})
    path = config.save(name, args.url, token, make_default=args.profile is None)
    print(f"logged in to {args.url} as profile {name!r} ({path})", file=sys.stderr)
    return OK


def _resolve_id(client: Client, noun: str, value: str) -> str:
    listing = VERBS[noun].get("list")
    if _UUID.match(value) or not listing or all(q["name"] != "name" for q in listing["query"]):
        return value
    found = client.request("GET", VERBS[noun]["list"]["path"], query={"name": value, "limit": 2})
    items = found.body.get("items", [])
    if len(items) != 1:
        what = "no" if not items else "more than one"
        raise ClientError(f"{what} {noun} named {value!r}: give its id", REFUSED)
    return str(items[0]["id"])


# Fields named after what a resource is used as, not its noun.
_NOUN_ALIASES = {"iso": "template"}  # iso_id: an ISO template


def _noun_of(field: str) -> str | None:
    """The noun a `*_id` or `*_ids` field names (target_host_id: host)."""
    stem = field.removesuffix("_ids").removesuffix("_id")
    if stem == field:
        return None
    if stem in _NOUN_ALIASES:
        return _NOUN_ALIASES[stem]
    words = stem.split("_")
    for start in range(len(words)):
        noun = "-".join(words[start:])
        if noun in VERBS and "list" in VERBS[noun]:
            return noun
    return None


def _body(client: Client, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = dict(getattr(args, "raw_body", None) or {})
    for f in spec["body"]:
        value = getattr(args, "body:" + ".".join(f["path"]), None)
        if value is None:
            continue
        noun = _noun_of(f["path"][-1])
        if noun is not None and isinstance(value, str):
            value = _resolve_id(client, noun, value)  # a name is as good as an id
        elif noun is not None and isinstance(value, list):
            value = [_resolve_id(client, noun, str(v)) for v in value]
        target = body
        for part in f["path"][:-1]:
            target = target.setdefault(part, {})
        target[f["path"][-1]] = value
    missing: list[str] = []
    for f in spec["body"]:
        found: Any = body
        for part in f["path"]:
            found = found.get(part) if isinstance(found, dict) else None
        if f["required"] and found is None:
            missing.append("--" + f["flag"])
    if missing:
        raise ClientError(f"missing {', '.join(missing)}", USAGE)
    return body


def _run_verb(noun: str, args: argparse.Namespace) -> int:
    spec = VERBS[noun][args.verb]
    client = _client(args)
    try:
        path = spec["path"]
        if "{id}" in path:
            path = path.replace("{id}", _resolve_id(client, noun, args.id))
        query = {
            k.split(":", 1)[1]: v
            for k, v in vars(args).items()
            if k.startswith("query:") and v is not None
        }
        if args.verb == "events":
            return _print_events(client, path, query, args)
        if spec["method"] == "GET":
            return _get(client, noun, args, path, query)
        if not spec["command"]:  # not an engine command (tokens): the answer is the document
            return _post(client, noun, spec, args, path)
        return _command(client, noun, spec, args, path)
    finally:
        client.close()


def _get(
    client: Client, noun: str, args: argparse.Namespace, path: str, query: dict[str, Any]
) -> int:
    reply = client.request("GET", path, query=query)
    document = reply.body
    if isinstance(document, dict) and "items" in document and args.verb == "list":
        items = list(document["items"])
        while getattr(args, "all", False) and document.get("next_cursor"):
            document = client.request(
                "GET", path, query={**query, "cursor": document["next_cursor"]}
            ).body
            items.extend(document["items"])
        if args.output != "table":
            print(output.emit(items, args.output))
            return OK
        print(output.items_table(noun, items))
        if document.get("next_cursor"):
            print("(more: --all, or --cursor " + document["next_cursor"] + ")", file=sys.stderr)
        return OK
    if args.output != "table":
        print(output.emit(document, args.output))
    elif isinstance(document, dict):
        print(output.details(document))
    else:
        print(document)
    return OK


def _post(
    client: Client, noun: str, spec: dict[str, Any], args: argparse.Namespace, path: str
) -> int:
    document = client.request("POST", path, body=_body(client, spec, args)).body
    if args.output != "table":
        print(output.emit(document, args.output))
    elif isinstance(document, dict) and "token" in document:
        # A new token: its secret alone on stdout (a script captures it), as
        # the server-side `token create` prints it; the rest on stderr.
        print(f"created {document['role']} token {document['id']} for account"
              f" {document['account']}", file=sys.stderr)  # fmt: skip
        print(document["token"], flush=True)
    else:
        print(output.details(document))
    return OK


def _command(
    client: Client, noun: str, spec: dict[str, Any], args: argparse.Namespace, path: str
) -> int:
    key = args.idempotency_key or f"cli-{os.urandom(16).hex()}"
    reply = client.request(
        "POST", path, body=_body(client, spec, args), headers={"Idempotency-Key": key}
    )
    accepted = reply.body
    operation_id = accepted.get("operation_id") if isinstance(accepted, dict) else None
    if not (getattr(args, "wait", False) and operation_id):
        if args.output != "table":
            print(output.emit(accepted, args.output))
        elif operation_id:
            print(
                f"{noun} {accepted['resource_id']}: operation {operation_id} started"
                f" (cloud-engine operation show {operation_id})"
            )
        else:
            value = f" ({accepted['value']})" if accepted.get("value") is not None else ""
            print(f"{accepted.get('resource_type', noun)} {accepted['resource_id']}{value}")
        return OK
    from cloud_engine.client.wait import wait

    live = sys.stderr.isatty() and args.output == "table"
    op = wait(client, operation_id, live=live)
    if args.output != "table":
        print(output.emit(op, args.output))
    if op["state"] != "succeeded":
        attributes = op.get("attributes", {})
        step = attributes.get("failed_step")
        where = f" at step {step}" if step else ""
        print(
            f"cloud-engine: operation {op['state']}{where}: {attributes.get('error') or ''}",
            file=sys.stderr,
        )
        return OPERATION_FAILED
    if args.output == "table":
        resource = client.request("GET", f"{VERBS[noun]['list']['path']}/{accepted['resource_id']}")
        print(output.items_table(noun, [resource.body]))
    return OK


# Events ---------------------------------------------------------------------------

FOLLOW_POLL_S = 0.5


def _events(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        nouns = [args.type] if args.type else [n for n in _PROBE if "events" in VERBS.get(n, {})]
        nouns += [n for n in NOUNS if n not in nouns and "events" in VERBS[n] and not args.type]
        for noun in nouns:
            path = VERBS[noun]["events"]["path"].replace("{id}", args.id)
            try:
                client.request("GET", path, query={"limit": 1})
            except ClientError as e:
                if e.problem and e.problem.get("status") == 404:
                    continue
                raise
            return _print_events(client, path, {}, args)
        raise ClientError(f"no resource {args.id} (or not yours)", REFUSED)
    finally:
        client.close()


_PROBE = ("vm", "operation", "volume", "network", "ip", "host", "template", "zone")


def _print_events(
    client: Client, path: str, query: dict[str, Any], args: argparse.Namespace
) -> int:
    after = int(query.get("after_version") or 0)
    follow = getattr(args, "follow", False)
    rows: list[dict[str, Any]] = []
    first = True
    while True:
        page = client.request("GET", path, query={**query, "after_version": after}).body
        items = page.get("items", [])
        for item in items:
            after = max(after, int(item.get("version", after)))
        if follow and args.output != "table":
            for item in items:  # one document a line, as they come
                print(
                    json.dumps(item) if args.output == "json" else output.yaml([item]), flush=True
                )
        elif follow:
            for item in items:
                print(_event_line(item), flush=True)
        else:
            rows.extend(items)
        if page.get("next_after_version"):
            continue
        if not follow:
            break
        if first:
            first = False
        try:
            from time import sleep

            sleep(FOLLOW_POLL_S)
        except KeyboardInterrupt:
            return OK
    if args.output != "table":
        print(output.emit(rows, args.output))
    else:
        for item in rows:
            print(_event_line(item))
    return OK


def _event_line(item: dict[str, Any]) -> str:
    return (
        f"{item.get('time', '')}  v{item.get('version')}  {item.get('event')}  "
        f"{item.get('actor', '')}  {item.get('summary', '')}"
    ).rstrip()
