"""The `upsell` command line: demo, serve, trigger, reply, approve, runs, sweep, blocks."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from typer.core import TyperGroup

from deployments.report import render_report, report_command

if TYPE_CHECKING:
    from deployments.stack import Stack

#: ctx.meta key: True when the command line only asks for a command's help (no Prefect API needed for that).
ONLY_HELP = "upsell.only_help"
#: Commands that need no Prefect API (they read files) or start their own server when there is none.
NO_API_COMMANDS = frozenset({"up", "demo", "playbooks", "inbound"})
NO_API = "No Prefect API: start the stack with `upsell up`, or set PREFECT_API_URL"


class UpsellGroup(TyperGroup):
    """The `upsell` group: notes whether a subcommand is only asked for its help, which the group callback (run
    before the subcommand reads its options) needs to know."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:  # typer's own click types: private to it
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta[ONLY_HELP] = "--help" in rest or (isinstance(command, TyperGroup) and not rest)
        return name, command, rest


app = typer.Typer(
    name="upsell",
    cls=UpsellGroup,
    help="Upsell: turn usage alerts into sales opportunities, on Prefect 3.",
    no_args_is_help=True,
    add_completion=False,
)
blocks_app = typer.Typer(help="Prefect blocks of the integrations.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")
playbooks_app = typer.Typer(help="Playbooks: which accounts get which upsell.", no_args_is_help=True)
app.add_typer(playbooks_app, name="playbooks")
app.command("report")(report_command)


def _dev_secret_file(data_dir: Path) -> Path:
    """Where `upsell up` keeps the development webhook secret when UPSELL_WEBHOOK_SECRETS is not set."""
    return data_dir / "webhook-secret"


def _fail(message: str) -> typer.Exit:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.callback()
def use_the_stack(ctx: typer.Context) -> None:
    """Upsell: turn usage alerts into sales opportunities, on Prefect 3."""
    if ctx.invoked_subcommand in NO_API_COMMANDS or ctx.meta.get(ONLY_HELP):
        return
    import sys

    if "prefect" not in sys.modules:  # before Prefect reads its settings: never a throwaway server of its own
        os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
        PREFECT_UI_URL,
        get_current_settings,
        temporary_settings,
    )

    updates: dict[Any, Any] = {PREFECT_SERVER_ALLOW_EPHEMERAL_MODE: False}
    if not PREFECT_API_URL.value():
        api_url, ui_url = stack_api()
        updates[PREFECT_API_URL] = api_url
        if get_current_settings().ui_url is None:  # PREFECT_UI_URL not set: the stack's UI
            updates[PREFECT_UI_URL] = ui_url
    else:
        configured = PREFECT_API_URL.value()
        if not api_reachable(configured):
            raise _fail(f"PREFECT_API_URL={configured} does not answer: start its server, or unset it to use the "
                        "stack `upsell up` records")  # fmt: skip
    ctx.with_resource(temporary_settings(updates=updates))


def stack_api() -> tuple[str, str]:
    """The Prefect API and UI of the stack `upsell up` recorded in this data folder, if its server answers."""
    from deployments.stack import api_is_up, read_stack_record, stack_file

    data_dir = settings_data_dir()
    record = read_stack_record(data_dir)
    if record is None:
        raise _fail(NO_API)
    if not api_is_up(record.prefect_api_url):
        raise _fail(f"the stack recorded in {stack_file(data_dir)} is gone (its Prefect API {record.prefect_api_url}"
                    " does not answer): start it with `upsell up`, or set PREFECT_API_URL")  # fmt: skip
    return record.prefect_api_url, record.ui_url


def settings_data_dir() -> Path:
    """The data folder as the settings read it (UPSELL_DATA_DIR), without building them all: that would keep a
    development link secret there, and refuse a production configuration a command may not need."""
    from tasks.runtime.settings import UpsellSettings

    return Path(os.environ.get("UPSELL_DATA_DIR") or UpsellSettings.model_fields["data_dir"].default)


def api_reachable(api_url: str) -> bool:
    """True when something answers at `api_url` (any HTTP answer: Prefect Cloud may want a key for /health)."""
    import httpx

    try:
        httpx.get(f"{api_url.rstrip('/')}/health", timeout=5)
    except httpx.TransportError:
        return False
    return True


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all demo runs to finish.")] = 300.0,
    keep_server: Annotated[bool, typer.Option(help="Leave the Prefect server it started running.")] = False,
    external_workers: Annotated[
        bool, typer.Option(help="Do not serve the deployments here: workers on the upsell-pool work pool run them.")
    ] = False,
) -> None:
    """Run the demo: a local Prefect server (unless PREFECT_API_URL is set), the served deployments, and
    three alerts (HYBRID/yes, FULL/no, HUMAN/timeout) answered through the real resume path."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.demo import format_table, run_demo
    from deployments.stack import (
        Stack,
        ensure_prefect_server,
        interrupted_by_stop_signals,
        start_runner,
        wait_for_deployments,
    )
    from tasks.runtime.settings import get_settings

    settings = get_settings()
    log = (lambda m: typer.echo(m, err=True)) if as_json else typer.echo
    if settings.playbooks_file is None:  # the served runs read it from the environment they inherit
        os.environ["UPSELL_PLAYBOOKS_FILE"] = str(DEMO_PLAYBOOKS)
        log(f"Playbooks: {DEMO_PLAYBOOKS} (the demo's; set UPSELL_PLAYBOOKS_FILE to use yours)")
    stack = Stack(log_dir=settings.data_dir / "logs")
    started = time.monotonic()
    with interrupted_by_stop_signals():  # `kill` stops the processes it started, as Ctrl-C does
        try:
            api_url, own_server = ensure_prefect_server(stack)
            log(f"Prefect API: {api_url}" + (" (started by this command)" if own_server else ""))
            if not external_workers:
                start_runner(stack, api_url, sweep_interval_s=0, poll_s=1)
            wait_for_deployments(api_url, ["upsell/upsell", "reply-timeouts/reply-timeouts"], stack)
            log(
                "Deployments "
                + ("run by the upsell-pool workers" if external_workers else "served")
                + ": upsell/upsell, reply-timeouts/reply-timeouts"
            )
            with temporary_settings(updates={PREFECT_API_URL: api_url}):  # this process talks to the same API
                rows = asyncio.run(run_demo(api_url, timeout_s=timeout, log=log))
                report = render_report()  # while the API (where the store's block would be saved) is up
        except (RuntimeError, TimeoutError) as exc:
            raise _fail(str(exc)) from exc
        finally:
            if keep_server:
                stack.processes = [p for p in stack.processes if p[0] != "prefect-server"]
            stack.stop()
    elapsed = time.monotonic() - started
    standins = sorted({s for r in rows for s in (r["standins"] or [])})
    if as_json:
        typer.echo(json.dumps({"runs": rows, "standins": standins, "wall_time_s": round(elapsed, 1)}, indent=2))
    else:
        typer.echo("")
        typer.echo(format_table(rows))
        typer.echo("")
        if standins:
            typer.echo(
                f"Local stand-ins used (no block saved): {', '.join(standins)}; files under {settings.data_dir}/"
            )
        typer.echo(f"Demo wall time: {elapsed:.1f}s")
        typer.echo("")
        typer.echo("Funnel of the upsells logged in this data folder (`upsell report`; the page: GET /report):")
        typer.echo(report)
    if not all(r["ok"] for r in rows):
        raise typer.Exit(code=1)


#: The playbooks of `upsell demo`: an A/B test of two emails for the trading accounts on Growth.
DEMO_PLAYBOOKS = Path(__file__).with_name("demo_playbooks.yaml")


def _webhook_secret(data_dir: Path) -> str:
    """The secret `upsell up` signs alerts with: UPSELL_WEBHOOK_SECRETS' first, else a development one kept in
    the data folder (so links and scripts survive restarts); none when unsigned alerts are allowed."""
    import secrets as random_secrets

    secret = os.environ.get("UPSELL_WEBHOOK_SECRETS", "").split(",")[0].strip()
    if secret or os.environ.get("UPSELL_WEBHOOK_INSECURE_DEV", "").lower() in ("1", "true", "yes"):
        return secret
    secret_file = _dev_secret_file(data_dir)
    if not secret_file.exists():
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(random_secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    typer.echo(f"Using the development webhook secret in {secret_file} (set UPSELL_WEBHOOK_SECRETS to override)")
    return secret_file.read_text().strip()


def _wait_for_receiver(stack: Stack, receiver: str, timeout_s: float = 60) -> None:
    """Block until the receiver `up` started answers its health check (or say why it stopped)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{receiver}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if stack.processes[-1][1].poll() is not None:
            raise RuntimeError(f"the receiver exited:\n{stack.log_tail('receiver')}")
        time.sleep(0.5)
    raise TimeoutError("the receiver did not answer /healthz")


def ui_url_of(api_url: str) -> str:
    """The Prefect UI of a Prefect server's API (served at the root of the same address)."""
    return api_url.rstrip("/").removesuffix("/api")


def _up_banner(
    api_url: str, own_server: bool, receiver: str, links: str, log_dir: Path, secret: str, recorded: Path
) -> str:
    """What `upsell up` prints once everything answers: where things are, how another shell reaches them, and a
    signed alert to try."""
    from tasks.runtime.signing import sign

    ui_url = ui_url_of(api_url)
    body = json.dumps(
        {
            "event_id": f"curl-{int(time.time())}",
            "account_id": "12345",
            "metric_type": "trade_volume",
            "current_value": 150,
            "threshold": 100,
            "severity": "high",
        },
        separators=(",", ":"),
    )
    signature = f"-H 'X-Upsell-Signature: {sign(body.encode(), secret)}' " if secret else ""
    return f"""
Prefect UI      {ui_url}{" (started here)" if own_server else ""}
Prefect API     {api_url}
Receiver        {receiver}   (API docs: {receiver}/docs, health: {receiver}/healthz)
Funnel report   {receiver}/report   (sign in with UPSELL_REPORT_TOKEN or UPSELL_REPORT_USER/_PASSWORD; 404 unset)
Links sent      {links}   (in the emails and Slack messages; set UPSELL_PUBLIC_BASE_URL to change)
Deployments     upsell/upsell, reply-timeouts/reply-timeouts (every 5 min), upsell-recovery (every minute),
                upsell-backfill (daily)
Logs            {log_dir}/

Recorded in {recorded}: the `upsell` commands of this data folder use this stack. From elsewhere:
  export PREFECT_API_URL={api_url}

Send the seed alert (signature valid for 5 minutes):
  curl -sS -X POST {receiver}/alerts -H 'Content-Type: application/json' {signature}--data '{body}'

Sign your own: t=$(date +%s); sig=$(printf '%s.%s' "$t" "$BODY" | openssl dgst -sha256 -hmac "$SECRET" | cut -d' ' -f2)
  -H "X-Upsell-Signature: t=$t,v1=$sig"

Press Ctrl-C to stop everything started here."""


@app.command()
def up(
    receiver_port: Annotated[
        int | None, typer.Option(help="Port of the receiver (default UPSELL_PORT, else 8000); the links follow it.")
    ] = None,
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect server (when it starts one).")] = 4200,
) -> None:
    """Start the local stack: Prefect server + UI (unless PREFECT_API_URL is set), the served deployments and
    the receiver; print the URLs and a signed curl example; Ctrl-C (or SIGTERM) stops every process it started."""
    import sys

    from deployments.stack import (
        Stack,
        StackRecord,
        base_env,
        ensure_prefect_server,
        interrupted_by_stop_signals,
        port_is_free,
        remove_stack_record,
        start_runner,
        wait_for_deployments,
        write_stack_record,
    )
    from tasks.runtime.settings import get_settings

    settings = get_settings()
    port = settings.port if receiver_port is None else receiver_port
    if not port_is_free(port):
        raise _fail(f"port {port} is in use: is `upsell up` already running? (nothing was started)")
    secret = _webhook_secret(settings.data_dir)
    stack = Stack(log_dir=settings.data_dir / "logs")
    with interrupted_by_stop_signals():
        try:
            api_url, own_server = ensure_prefect_server(stack, prefect_port)
            start_runner(stack, api_url, receiver_port=port)
            wait_for_deployments(api_url, ["upsell/upsell", "reply-timeouts/reply-timeouts"], stack)
            receiver_env = base_env(api_url, receiver_port=port)
            if secret:
                receiver_env["UPSELL_WEBHOOK_SECRETS"] = ",".join(
                    [secret, *os.environ.get("UPSELL_WEBHOOK_SECRETS", "").split(",")[1:]]
                ).strip(",")
            stack.start("receiver", [sys.executable, "-m", "webhook"], receiver_env)
            receiver = f"http://127.0.0.1:{port}"
            _wait_for_receiver(stack, receiver)
            links = settings.with_port(port).public_base_url
            record = StackRecord(prefect_api_url=api_url, ui_url=ui_url_of(api_url), receiver_url=receiver,
                                 pid=os.getpid())  # fmt: skip
            recorded = write_stack_record(settings.data_dir, record).resolve()
            typer.echo(_up_banner(api_url, own_server, receiver, links, stack.log_dir, secret, recorded))
            while all(process.poll() is None for _name, process in stack.processes):
                time.sleep(1)
            dead = [name for name, process in stack.processes if process.poll() is not None]
            raise RuntimeError(f"{', '.join(dead)} stopped unexpectedly; see {stack.log_dir}/")
        except KeyboardInterrupt:
            typer.echo(f"\nStopping {', '.join(name for name, _process in reversed(stack.processes))}...")
        except (RuntimeError, TimeoutError) as exc:
            raise _fail(str(exc)) from exc
        finally:
            remove_stack_record(settings.data_dir, os.getpid())  # first: the commands stop using it
            stack.stop()
    typer.echo("Stopped every process started by `upsell up`.")


@app.command()
def serve(
    sweep_interval: Annotated[
        int,
        typer.Option(
            help="How often (seconds) the serving process looks for expired waits and runs the reply-timeouts"
            " sweep when it finds some; 0 disables that look."
        ),
    ] = 300,
    limit: Annotated[
        int | None, typer.Option(help="Max flow runs in flight (400 threads, 8 processes with --processes).")
    ] = None,
    executing: Annotated[
        int | None,
        typer.Option(min=1, help="Of the runs in flight, how many execute steps at once (8); the others queue."),
    ] = None,
    processes: Annotated[
        bool, typer.Option("--processes", help="One Python process per flow run (Prefect's default) not threads.")
    ] = False,
) -> None:
    """Serve the deployments of prefect.yaml (upsell, reply-timeouts, upsell-recovery, upsell-backfill,
    upsell-report) from this process (needs a Prefect API)."""
    from deployments.serve import main as serve_main

    args = ["--sweep-interval", str(sweep_interval)]
    args += ["--limit", str(limit)] if limit else []
    args += ["--executing", str(executing)] if executing else []
    args += ["--processes"] if processes else []
    serve_main(args)


#: What a person is asked at each checkpoint, as `upsell trigger` explains an automation level.
CHECKPOINT_ASKS = {
    "approve-email": "approve the email before it is sent",
    "review": "review the upsell once the customer replies",
    "approve-meeting": "approve the meeting",
    "approve-opportunity": "approve the opportunity and its value before it is logged",
}


def describe_level(level: str) -> str:
    """The automation level in plain words: what it does on its own and what it asks a person."""
    from flows.approvals import Checkpoint, asks
    from flows.models import AutomationLevel

    if not level:
        return "chosen by the account's playbook once the run has fetched the contract"
    asked = [CHECKPOINT_ASKS.get(c.value, c.value) for c in Checkpoint if asks(AutomationLevel(level), c)]
    if not asked:
        return f"{level}: runs on its own, no approval asked"
    return f"{level}: asks a reviewer to " + ", then to ".join(asked)


def triggered_run(run: Any, run_url: str) -> dict[str, str]:
    """What `upsell trigger` tells of the run, from the run's own parameters (a repeated alert gets the first
    run back): its id, the name it takes when it starts, its page, its automation level, its alert."""
    from flows.models import UsageAlert

    alert = UsageAlert.model_validate(run.parameters["alert"])
    return {"flow_run_id": str(run.id), "name": alert.run_name, "url": run_url,
            "automation_level": run.parameters.get("automation_level", ""), "account_id": alert.account_id,
            "event_id": alert.event_id}  # fmt: skip


def describe_trigger(run: Any, shown: dict[str, str]) -> str:
    """What `upsell trigger` prints: which run, where to watch it, and how to answer what it will wait for."""
    from prefect.client.schemas.objects import StateType

    if run.state is None or run.state.type is StateType.SCHEDULED:
        first = f"Started upsell run '{shown['name']}' for account {shown['account_id']} (alert {shown['event_id']})."
    else:
        first = f"Alert {shown['event_id']} already has an upsell: run '{shown['name']}', now {run.state.name}."
    return f"""{first}
Automation   {describe_level(shown['automation_level'])}
Watch it     {shown['url']}
Follow it    upsell runs   (its state and what it waits for)
             upsell approve {run.id}   (when it waits for a reviewer)
             upsell reply {run.id} yes|no|maybe   (answer for the customer, e.g. when testing)
Run id       {run.id}"""


@app.command()
def trigger(
    account_id: Annotated[str, typer.Argument(help="Account id, e.g. 12345.")],
    event_id: Annotated[str, typer.Argument(help="Unique alert id; a repeat returns the same run.")],
    metric: Annotated[str, typer.Option(help="Metric type.")] = "trade_volume",
    level: Annotated[
        str | None, typer.Option(help="FULL_AUTOMATION, HYBRID or HUMAN_INTERVENTION (default: from the severity).")
    ] = None,
    severity: Annotated[str, typer.Option(help="low, medium, high or critical.")] = "high",
    value: Annotated[float | None, typer.Option(help="Current value of the metric.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Threshold the value crossed.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON (id, name, link, level).")] = False,
) -> None:
    """Start an upsell for one alert through the `upsell` deployment (once per event id); print the run's name,
    its page in the Prefect UI, its automation level and how to follow it."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.api import UpsellRequestError, build_alert, create_upsell_run
    from flows.models import AutomationLevel, Severity, automation_level_for
    from flows.playbooks import PlaybookFileError, load_playbooks
    from tasks.post_slack_summary import run_url
    from tasks.runtime.settings import get_settings

    settings = get_settings()

    async def go() -> Any:
        chosen = level or automation_level_for(Severity(severity), settings.severity_levels).value
        alert, checked = build_alert(account_id, event_id, metric, chosen, current_value=value,
                                     threshold=threshold, severity=severity)  # fmt: skip
        # as the receiver does: without --level, the alert's playbook sets the level (None: the run decides it)
        playbook = None if level else load_playbooks(settings.playbooks_file).on_alert(alert)
        run_level: AutomationLevel | None = checked
        if not level:
            run_level = (playbook.automation_level or checked) if playbook else None
        async with get_client() as client:
            return await create_upsell_run(client, alert, run_level, deployment_name=settings.deployment_name,
                                           playbook=playbook.name if playbook else None)  # fmt: skip

    try:
        run = asyncio.run(go())
    except (UpsellRequestError, PlaybookFileError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except ObjectNotFound:
        raise _fail(
            f"the {settings.deployment_name} deployment is not served: start `upsell up` (or `upsell serve`) first"
        ) from None
    except httpx.HTTPError as exc:
        raise _fail(f"the Prefect API does not answer ({exc}): start `upsell up` or set PREFECT_API_URL") from None
    shown = triggered_run(run, run_url(str(run.id)))
    typer.echo(json.dumps(shown) if as_json else describe_trigger(run, shown))


@app.command()
def reply(
    flow_run_id: Annotated[str, typer.Argument(help="The waiting upsell run.")],
    answer: Annotated[str, typer.Argument(help="yes, no or maybe.")],
) -> None:
    """Resume a run waiting for the customer's reply."""
    from prefect.client.orchestration import get_client

    from flows.api import NotWaitingError, UpsellRequestError, send_customer_reply

    async def go() -> None:
        async with get_client() as client:
            await send_customer_reply(client, flow_run_id, answer)

    try:
        asyncio.run(go())
    except (UpsellRequestError, NotWaitingError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"Resumed {flow_run_id} with reply {answer}")


def login_name() -> str:
    """The operator's login name, or "" where the system cannot tell."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


@app.command()
def approve(
    flow_run_id: Annotated[str, typer.Argument(help="The waiting upsell run.")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving.")] = False,
    value: Annotated[float | None, typer.Option(help="Estimated value (review/opportunity waits).")] = None,
    note: Annotated[str, typer.Option(help="Reviewer note.")] = "",
    reviewer: Annotated[
        str, typer.Option(help="Who decides, shown on the run's stage table (default: your login name).")
    ] = "",
    subject: Annotated[str, typer.Option(help="Edited email subject (email approval).")] = "",
    body: Annotated[
        Path | None,
        typer.Option(
            help="File with the edited message (email approval; the answer links, signature and unsubscribe"
            " footer are added when it is sent)."
        ),
    ] = None,
) -> None:
    """Answer whatever approval the run is waiting for (email, review, meeting or opportunity)."""
    from prefect.client.orchestration import get_client

    from flows.api import NotWaitingError, UpsellRequestError, resume_wait, waiting_for

    async def go() -> str:
        async with get_client() as client:
            kind = await waiting_for(client, flow_run_id)
            if kind not in CHECKPOINT_ASKS:
                raise NotWaitingError(f"flow run {flow_run_id} is not waiting for an approval ({kind or 'not paused'})")
            answer: dict[str, Any] = {"approved": not reject, "note": note, "reviewer": reviewer or login_name()}
            if kind in ("review", "approve-opportunity"):
                if value is None:
                    raise UpsellRequestError("--value is required to answer a review (the estimated value)")
                answer["estimated_value"] = value
            if kind == "approve-email":
                answer.update(subject=subject, body_text=body.read_text() if body else "")
            await resume_wait(client, flow_run_id, kind, answer)
            return kind

    try:
        kind = asyncio.run(go())
    except (UpsellRequestError, NotWaitingError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{'Rejected' if reject else 'Approved'} {kind} of {flow_run_id}")


#: The columns of `upsell runs`: heading, and the row's key.
RUNS_COLUMNS = [("Run", "name"), ("State", "state"), ("Waiting for", "waiting_for"), ("Age (h)", "age_h"),
                ("Run id", "flow_run_id"), ("Health", "health")]  # fmt: skip


def runs_table(rows: list[dict[str, Any]]) -> str:
    """`upsell runs` as a table with a header row, each column as wide as its longest cell."""
    cells = [[heading for heading, _key in RUNS_COLUMNS]]
    cells += [["-" if row[key] is None else str(row[key]) for _heading, key in RUNS_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(RUNS_COLUMNS) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(line, widths, strict=False)), line[-1]]).rstrip()
        for line in cells
    )


@app.command()
def runs(
    limit: Annotated[int, typer.Option(help="How many runs to list (pages through the API past 200).")] = 50,
    stale_after_s: Annotated[float, typer.Option(help="A run is dead after this long without a heartbeat.")] = 90.0,
    failed_within_h: Annotated[
        float, typer.Option(help="Also list upsells that ended Failed this recently (0: none), with the reason.")
    ] = 24.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List open upsells (not finished, or Crashed) with their stage, age and health (live, dead, waiting),
    and the upsells that ended Failed in the last day (given up after their recoveries, or a failed step)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    from tasks.recover_runs import dead_among
    from tasks.runtime.flow_runs import upsell_runs

    open_types = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CRASHED]
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        found = upsell_runs(client, open_types, limit=limit, sort=FlowRunSort.START_TIME_DESC)
        dead = {d.run.id: d for d in dead_among(client, found, now, stale_after_s)}
        if failed_within_h > 0:
            found += upsell_runs(client, [StateType.FAILED], limit=limit, sort=FlowRunSort.END_TIME_DESC,
                                 ended_after=now - timedelta(hours=failed_within_h))  # fmt: skip

    def health(run: Any) -> str:
        if run.state and run.state.type is StateType.FAILED:
            return f"failed: {run.state.message or 'no reason recorded'}"
        if run.id in dead:
            return f"dead: {dead[run.id].problem} (run `upsell recover {run.id}`)"
        if run.state and run.state.is_paused():
            return "waiting"
        return "live" if run.state and run.state.type is StateType.RUNNING else "queued"

    rows = [
        {
            "flow_run_id": str(r.id),
            "name": r.name,
            "state": r.state.name if r.state else "",
            "waiting_for": r.state.state_details.pause_key if r.state and r.state.is_paused() else None,
            "health": health(r),
            "age_h": round((now - r.created).total_seconds() / 3600, 2) if r.created else None,
            "tags": r.tags,
        }
        for r in found
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("No open upsells.")
        return
    typer.echo(runs_table(rows))


@app.command()
def recover(
    run_id: Annotated[str | None, typer.Argument(help="One upsell run; all dead upsells when omitted.")] = None,
    stale_after_s: Annotated[float, typer.Option(help="A run is dead after this long without a heartbeat.")] = 90.0,
    max_attempts: Annotated[int, typer.Option(help="Recoveries per run before it ends Failed.")] = 3,
    backoff_s: Annotated[float, typer.Option(help="Delay before the first rerun; doubles per attempt.")] = 0.0,
) -> None:
    """Run dead upsells again now (what the upsell-recovery deployment does every minute)."""
    from flows.recovery import upsell_recovery

    try:
        ids = [UUID(run_id)] if run_id else None
    except ValueError:
        raise _fail(f"run_id: {run_id!r} is not a flow run id") from None
    done = upsell_recovery(stale_after_s=stale_after_s, max_attempts=max_attempts, backoff_s=backoff_s,
                           flow_run_ids=ids)  # fmt: skip
    if not done:
        typer.echo("Nothing to recover: no dead or stuck upsell" + (f" with id {run_id}" if run_id else "") + ".")
    for flow_run_id, outcome in done.items():
        typer.echo(f"{flow_run_id}  {outcome}")


@app.command()
def backfill(
    window_hours: Annotated[float, typer.Option(help="Hours back from --end to scan.")] = 24.0,
    end: Annotated[datetime | None, typer.Option(help="End of the window (UTC); default now.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be triggered.")] = False,
) -> None:
    """Scan the usage source over a window and submit each alert with no upsell yet to the receiver."""
    from datetime import timedelta

    from pydantic import ValidationError

    from deployments.stack import read_stack_record
    from tasks.backfill_alerts import scan_usage_alerts, submit_alert
    from tasks.runtime.settings import get_settings

    stack = read_stack_record(settings_data_dir())
    if stack and not {"UPSELL_PUBLIC_BASE_URL", "UPSELL_PORT"} & set(os.environ):
        os.environ["UPSELL_PUBLIC_BASE_URL"] = stack.receiver_url  # the receiver `upsell up` started
    secret_file = _dev_secret_file(get_settings().data_dir)
    if not os.environ.get("UPSELL_WEBHOOK_SECRETS") and secret_file.exists():
        os.environ["UPSELL_WEBHOOK_SECRETS"] = secret_file.read_text().strip()  # the receiver `upsell up` started
    until = (end.replace(tzinfo=end.tzinfo or UTC)) if end else datetime.now(UTC)
    since = until - timedelta(hours=window_hours)
    try:
        alerts = scan_usage_alerts.fn(since, until)
        verdicts: dict[str, int] = {}
        with typer.progressbar(alerts, label="Submitting alerts", show_pos=True) as progress:
            for alert in progress:
                verdict = submit_alert.fn(alert, dry_run).verdict
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
    except ValidationError as exc:  # e.g. UPSELL_WEBHOOK_SECRETS missing: the receiver would refuse the alerts
        raise _fail(str(exc.errors()[0]["msg"])) from exc
    except httpx_errors() as exc:
        raise _fail(f"the receiver at its public URL did not answer: {exc}") from exc
    typer.echo(
        f"Window {since:%Y-%m-%d %H:%M}..{until:%Y-%m-%d %H:%M} UTC{' (dry run)' if dry_run else ''}: "
        f"scanned {len(alerts)}, qualifying {len(alerts) - verdicts.get('not_qualifying', 0)}, "
        f"already handled {verdicts.get('already_handled', 0)}, "
        + (
            f"would trigger {verdicts.get('would_trigger', 0)}"
            if dry_run
            else f"triggered {verdicts.get('triggered', 0)}, queued {verdicts.get('queued', 0)}"
        )
    )


def httpx_errors() -> tuple[type[Exception], ...]:
    import httpx

    return (httpx.HTTPError,)


@app.command()
def sweep() -> None:
    """Close expired waits now (what the reply-timeouts deployment does whenever the serving process finds one)."""
    from flows.reply_timeouts import reply_timeouts

    closed = reply_timeouts()
    typer.echo(f"Closed {len(closed)} expired wait(s)")


@app.command()
def inbound(
    limit: Annotated[int, typer.Option(help="How many of the latest to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """The latest emails and notifications SES sent the receiver (`POST /inbound/ses`) and what became of each:
    resumed, unmatched, not_waiting, auto_reply, bounced, complained, soft_bounce, ... (read from the receiver's
    file, so run it where the receiver runs)."""
    from webhook.settings import ReceiverFiles
    from webhook.store import ReceiverStore

    path = ReceiverFiles().receiver_db_path
    if not path.exists():
        raise _fail(f"no receiver file at {path}: run this where the receiver runs (UPSELL_DATA_DIR)")
    store = ReceiverStore(path)
    try:
        rows = store.inbound_rows(limit)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo("No inbound email yet.")
        return
    for row in rows:
        run = f" run {row['flow_run_id']}" if row.get("flow_run_id") else ""
        typer.echo(f"{row['received_at']}  {row['status']:<12}{run}  {row.get('detail') or ''}")


@blocks_app.command("register")
def blocks_register() -> None:
    """Register the block types with the Prefect API (same as `prefect block register -m blocks`)."""
    import blocks

    for name in blocks.__all__:
        getattr(blocks, name).register_type_and_schema()
        typer.echo(f"Registered {name}")


@blocks_app.command("create")
def blocks_create() -> None:
    """Save block documents `upsell-<service>` from UPSELL_* environment variables (see docs/blocks.md)."""
    try:
        from deployments.blocks_setup import create_blocks_from_env
    except ImportError as exc:  # pragma: no cover - the module ships with the integrations
        raise _fail(f"blocks setup unavailable: {exc}") from exc
    try:
        saved = create_blocks_from_env(os.environ)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    typer.echo("Saved: " + (", ".join(saved) if saved else "nothing (no UPSELL_* integration variables set)"))


def main() -> None:
    app()


@playbooks_app.command("check")
def playbooks_check(
    file: Annotated[Path, typer.Argument(help="The playbook file (YAML).", dir_okay=False)],
) -> None:
    """Validate a playbook file: print `ok` and the playbooks in the order they are tried, or each error with its
    line and field (exit code 1)."""
    from flows.playbooks import PlaybookFileError, load_playbooks

    try:
        book = load_playbooks(file)
    except PlaybookFileError as exc:
        for problem in exc.problems:
            typer.echo(f"{file}:{problem}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo("ok")
    for playbook in book.all:
        typer.echo(f"  {playbook.name}: {playbook.description or '-'}")


if __name__ == "__main__":
    main()
