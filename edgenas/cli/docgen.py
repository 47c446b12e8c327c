"""Generate the CLI reference (``docs/cli.md``) from the click commands themselves.

Run ``python -m edgenas.cli.docgen > docs/cli.md``; a test regenerates it and fails when the
committed file is stale, so the reference can never drift from ``--help``.
"""

from __future__ import annotations

import click

from edgenas.cli import main


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            found += _walk(cmd.commands[name], path + [name])
    return found


def render() -> str:
    lines = ["# edgenas command reference", "",
             "Generated from the click commands by `python -m edgenas.cli.docgen`; "
             "`edgenas COMMAND --help` prints the same text.", ""]
    for path, cmd in _walk(main, ["edgenas"]):
        # The same help option names a real invocation inherits from the top-level group
        # (click memoises a command's help option, so leaving this out makes the output depend
        # on what ran before in the process).
        ctx = click.Context(cmd, info_name=" ".join(path), terminal_width=100,
                            max_content_width=100,
                            help_option_names=main.context_settings["help_option_names"])
        title = " ".join(path)
        lines += [f"## `{title}`", "", "```text", cmd.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
