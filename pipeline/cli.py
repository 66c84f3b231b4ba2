"""The `escalate` command line: one subcommand per pipeline stage, listed in pipeline order.

The group is lazy: listing the commands (`escalate --help`) imports no command module, and a command's module is
imported only when that command is looked up, so help answers in a fraction of a second. Every user error — a bad
option value, a refused run — is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import TyperException

from pipeline.config import quiet_library_notices

quiet_library_notices()

#: name -> ("module:function", short help), in pipeline order: the order `escalate --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("pipeline.commands:simulate_command",
                 "Simulate a literature-calibrated cohort with the true outcome of every option."),
    "import": ("pipeline.commands:import_command",
               "Import real data from an OMOP CDM v5.4 database as contract tables (escalate import omop)."),
    "validate": ("pipeline.commands:validate_command",
                 "Check contract tables against the data contract and list every violation."),
    "features": ("pipeline.commands:features_command",
                 "Derive decision points, point-in-time features and outcome labels."),
    "split": ("pipeline.commands:split_command", "Split patients into train and test."),
    "train": ("pipeline.commands:train_command",
              "Fit the response, TIS and safety models; log and register them in MLflow."),
    "evaluate": ("pipeline.commands:evaluate_command",
                 "Evaluate the trained model on the held-out patients."),
    "explain": ("pipeline.commands:explain_command", "Global SHAP summaries per option."),
    "promote": ("pipeline.commands:promote_command",
                "Move alias champion to the candidate if it beats the champion."),
    "report": ("pipeline.commands:report_command", "Write the clinician page of one patient (or of all)."),
    "score": ("pipeline.commands:score_command",
              "Score every patient of a data folder as of a date, with reasons."),
}


def _one_line(text: str) -> str:
    """A message on one line (multi-line messages joined with '; ')."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


class LazyGroup(TyperGroup):
    """A typer group whose commands are imported on first use from `COMMANDS`, and whose errors are one line."""

    _listing = False  # True while the group's help is formatted: commands are described from COMMANDS alone

    def list_commands(self, ctx: Any) -> list[str]:
        """Command names in pipeline order."""
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command `cmd_name`, built by typer from its function on first use (None for an unknown name)."""
        if cmd_name not in COMMANDS:
            return None
        target, short = COMMANDS[cmd_name]
        if self._listing:
            return TyperCommand(name=cmd_name, short_help=short, help=short)
        if cmd_name not in self.commands:
            module, function = target.split(":")
            callback: Callable[..., Any] = getattr(importlib.import_module(module), function)
            sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                              rich_markup_mode=self.rich_markup_mode)
            sub.command(cmd_name, short_help=short)(callback)
            self.commands[cmd_name] = typer.main.get_command(sub)
        return self.commands[cmd_name]

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """The command named by `args[0]`; an unknown name is an error suggesting the nearest command names."""
        try:
            return super().resolve_command(ctx, args)
        except TyperException as err:
            near = difflib.get_close_matches(args[0], list(COMMANDS)) if args else []
            if near and "Did you mean" not in err.message:
                err.message = f"{err.message.rstrip('.')}. Did you mean {', '.join(map(repr, near))}?"
            raise

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The group's help, listing commands from `COMMANDS` without importing them."""
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """`escalate` alone prints the help (exit 2: a command is missing)."""
        if not args and not ctx.resilient_parsing:
            typer.echo(ctx.get_help())
            raise typer.Exit(2)
        return super().parse_args(ctx, args)

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        """Parse the group's own arguments; a usage error is one line, exit 2."""
        with _one_line_errors(info_name or "escalate"):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        """Resolve, parse and run the command; a usage error or refusal is one line with its exit status."""
        with _one_line_errors(ctx.command_path, ctx):
            return super().invoke(ctx)


@contextmanager
def _one_line_errors(where: str, group_ctx: Any = None) -> Iterator[None]:
    """Turn a usage error or refusal into `escalate COMMAND: error: …` on stderr and its exit status (2); `where`
    names the command when the error carries no context of its own (a refusal raised by a command's body)."""
    try:
        yield
    except TyperException as err:
        ctx = getattr(err, "ctx", None)
        if ctx is not None:
            where = ctx.command_path
        elif group_ctx is not None and group_ctx.invoked_subcommand:
            where = f"{group_ctx.command_path} {group_ctx.invoked_subcommand}"
        typer.echo(f"{where}: error: {_one_line(err.format_message())}", err=True)
        raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    name="escalate",
    cls=LazyGroup,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: typer 0.29's Rich help shows every on/off flag as `--all <bool>`
)


@app.callback()
def escalate() -> None:
    """Predict and explain the response of refractory dermatomyositis to each escalation option."""


if __name__ == "__main__":  # pragma: no cover - `python -m pipeline.cli`; the console script calls `app` itself
    app()
