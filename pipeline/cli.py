"""The `escalate` command line: one subcommand per pipeline stage, each a thin wrapper over pure code.

Stage modules import their heavy dependencies inside the command so `escalate --help` stays fast.
"""

from __future__ import annotations

import warnings

import typer

# pandera imports pyspark.pandas when the optional spark extra is installed; its pandas-3 notice is noise here.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

app = typer.Typer(
    name="escalate",
    help="Predict and explain the response of refractory dermatomyositis to each escalation option.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Registered stage commands (one line each; keep the pipeline order).
# <stages>
from pipeline.features import features_command, split_command  # noqa: E402

app.command("features")(features_command)
app.command("split")(split_command)
from pipeline.report import report_command  # noqa: E402

app.command("report")(report_command)
from pipeline.explain import explain_command  # noqa: E402

app.command("explain")(explain_command)
from pipeline.score import score_command  # noqa: E402

app.command("score")(score_command)
from pipeline.evaluate import evaluate_command  # noqa: E402
from pipeline.promote import promote_command  # noqa: E402
from pipeline.train import train_command  # noqa: E402

app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("promote")(promote_command)
from pipeline.simulate import simulate  # noqa: E402

app.command("simulate")(simulate)
from pipeline.validate import validate_command  # noqa: E402

app.command("validate")(validate_command)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
