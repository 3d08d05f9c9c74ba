"""CLI commands for plugin authors and users: ``models`` and ``plugin new``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from orchestrator.cli import EXIT_CONFIG, app, console, err_console

plugin = typer.Typer(no_args_is_help=True, help="Plugin packages: start one from a template.")
app.add_typer(plugin, name="plugin")


def signature(method: dict[str, Any]) -> str:
    args = []
    for a in method["args"]:
        text = f"{a['name']}: {a['type']}"
        if not a["required"]:
            text += f" = {a.get('default')!r}"
        args.append(text)
    return f"{method['name']}({', '.join(args)}) -> {method['returns']}"


@app.command()
def models(
    model: Annotated[str | None, typer.Argument(help="one model (namespace:family:name); default: every one")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every installed model: its API, plugin package and version, attributes and methods."""
    from orchestrator.resources import default_registry
    from orchestrator.resources.describe import describe_model

    registry = default_registry()
    regs = registry.registrations()
    if model is not None:
        if model not in registry:
            import difflib

            close = difflib.get_close_matches(model, registry.models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            err_console.print(f"unknown model {model!r}{hint}; installed: {', '.join(registry.models()) or 'none'}")
            raise typer.Exit(EXIT_CONFIG)
        regs = [registry.get(model)]
    described = [describe_model(r) for r in regs]
    for problem in registry.load_errors:
        err_console.print(f"[red]{problem}[/]")
    if as_json:
        print(json.dumps(described, indent=2, default=repr))
        return
    if not described:
        console.print("no models installed (install a plugin package: see docs/plugins.md)")
        return
    for d in described:
        table = Table(title=f"{d['model']}  ({d['kind']}, api {d['api']})", title_justify="left",
                      caption=f"{d['package'] or '?'} {d['version']}  ·  {d['class']}", caption_justify="left")
        table.add_column("method")
        table.add_column("moves", justify="center")
        table.add_column("doc")
        for m in d["methods"]:
            table.add_row(Text(signature(m)), "yes" if m["actuating"] else "", Text(m["doc"]))
        console.print(table)
        props = d["attributes"].get("properties", {})
        required = set(d["attributes"].get("required", []))
        if props:
            attrs = Table(title="attributes", title_justify="left", show_edge=False)
            for col in ("name", "type", "default", "description"):
                attrs.add_column(col)
            for name, p in props.items():
                kind = p.get("type") or " | ".join(x.get("type", "?") for x in p.get("anyOf", [])) or "object"
                default = "(required)" if name in required else json.dumps(p.get("default"))
                attrs.add_row(name, str(kind), default, Text(p.get("description", "")))
            console.print(attrs)
        console.print()


@plugin.command("new")
def plugin_new(
    name: Annotated[str, typer.Argument(help="the package's name, e.g. acme-fans (import package acme_fans)")],
    directory: Annotated[Path | None, typer.Option("--dir", help="where to create it (default: ./NAME)")] = None,
    namespace: Annotated[str | None, typer.Option(help="the models' namespace (default: NAME's first word)")] = None,
    family: Annotated[str | None, typer.Option(help="the models' family (default: NAME's other words)")] = None,
) -> None:
    """Create a plugin package: a motor and a sensor, their tests, the entry point, an example robot."""
    import orchestrator
    from orchestrator.plugin_template import PluginNames, new_plugin

    try:
        names = PluginNames.of(name, namespace, family)
        where = directory or Path(name)
        written = new_plugin(names, where, orchestrator.__version__)
    except (ValueError, FileExistsError) as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_CONFIG) from None
    console.print(f"[green]created[/] {where}/ ({len(written)} files): models "
                  f"{names.namespace}:{names.family}:motor and {names.namespace}:{names.family}:sensor")
    console.print(Text(f"next:  cd {where} && pip install -e '.[test]' && pytest && orchestrator models"))
