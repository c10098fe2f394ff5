"""MkDocs hook: the CLI reference (docs/cli.md) rendered from the typer app at build time, so it cannot drift."""

from __future__ import annotations

from typing import Any

import typer.main

# typer builds its commands on its own copy of click (typer._click), so the types are not imported: the objects
# are read through click's public interface (params, get_params, collect_usage_pieces, list_commands, context_class).

MARKER = "<!-- cli-reference -->"


def _option_row(param: Any, ctx: Any) -> str:
    record = param.get_help_record(ctx)
    if record is None:
        return ""
    names, help_text = record
    help_text = " ".join(help_text.split()).replace("|", "\\|").replace("<", "&lt;")
    return f"| `{names}` | {help_text} |"


def _argument_row(param: Any) -> str:
    help_text = " ".join((getattr(param, "help", None) or "").split()).replace("|", "\\|").replace("<", "&lt;")
    required = "" if param.required else " (optional)"
    name = (param.metavar or param.name or "").upper()
    return f"| `{name}`{required} | {help_text} |"


def _render(command: Any, ctx: Any, level: int) -> list[str]:
    path = ctx.command_path
    lines = [f"{'#' * level} `{path}`", ""]
    if command.help:
        lines += [command.help.strip(), ""]
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    lines += ["```text", usage, "```", ""]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [row for p in command.get_params(ctx) if p.param_type_name == "option" if (row := _option_row(p, ctx))]
    if arguments:
        lines += ["| Argument | Meaning |", "|---|---|", *(_argument_row(a) for a in arguments), ""]
    if options:
        lines += ["| Option | Meaning |", "|---|---|", *options, ""]
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += _render(sub, sub.context_class(sub, info_name=name, parent=ctx), level + 1)
    return lines


def cli_reference() -> str:
    """Every command and group of `upsell`, with its help, usage, arguments and options, as markdown."""
    from deployments.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="upsell")
    return "\n".join(_render(root, ctx, 2))


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri == "cli.md":
        return markdown.replace(MARKER, cli_reference())
    return markdown
