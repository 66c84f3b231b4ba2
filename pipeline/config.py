"""Configuration at the edge: read `params.yaml` (tuning) and `configs/*.yaml` (reference data).

Each section is validated into the frozen pydantic model that lives next to the code using it; this module
only finds and reads the files, so pure code never touches the file system.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import cache, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import yaml

from pipeline.cli_types import Refusal

if TYPE_CHECKING:
    from features.vocabulary import OptionCatalog, Vocabulary

T = TypeVar("T")
P = ParamSpec("P")
ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


#: libyaml's safe loader where PyYAML was built with it (the same documents, parsed ~10x faster), else PyYAML's own
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigFileError(Refusal, ValueError):
    """A YAML file that cannot be read as one: the message names the file, the line and what is wrong."""


class _UniqueKeyLoader(SAFE_LOADER):  # type: ignore[valid-type,misc]
    """The safe loader refusing a key written twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _timestamp(loader: Any, node: Any) -> Any:
    """A YAML date or time as PyYAML reads it; an impossible one (`2026-13-01`, `2026-02-30`) is a YAML error at
    its line rather than a traceback from the date constructor."""
    try:
        return SAFE_LOADER.construct_yaml_timestamp(loader, node)
    except ValueError as err:
        raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} is not a real date ({err})",
                                                node.start_mark) from None


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; an empty file is an empty mapping. A file that is not UTF-8 YAML, writes a key
    twice or holds no mapping is a `ConfigFileError` naming the file and the line."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigFileError(f"{path}:{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"{path}: not UTF-8 (byte {err.start}); save it as UTF-8") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a mapping (key: value lines) at the top level, got "
                              f"{type(data).__name__}")
    return data


def load_params(path: Path | str = "params.yaml") -> dict[str, Any]:
    """`params.yaml` of the working directory (DVC runs stages from the repository root)."""
    p = Path(path)
    if not p.exists() and not p.is_absolute():
        p = ROOT / p
    return read_yaml(p)


def tracking_uri(root: Path = ROOT) -> str:
    """`MLFLOW_TRACKING_URI` when set, else the absolute SQLite store of the repository."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


@cache
def load_reference(name: str) -> dict[str, Any]:
    """A reference-data file from `configs/` by stem, e.g. `load_reference("drugs")`."""
    return read_yaml(CONFIGS / f"{name}.yaml")


def load_catalog(name: str, parse: Callable[[dict[str, Any]], T]) -> T:
    """`configs/<name>.yaml` validated by `parse` (a reference class's `from_config`); see `validated`."""
    return validated(load_reference(name), parse, str(CONFIGS / f"{name}.yaml"))


def load_options(vocabulary: Vocabulary | None = None) -> OptionCatalog:
    """`configs/options.yaml` validated, every drug it names checked against `configs/drugs.yaml`'s generics (a
    misspelt name is an error naming the file, option, key and name, never skipped); `vocabulary`: that file
    already loaded by the caller."""
    from features.vocabulary import OptionCatalog, Vocabulary

    drugs = vocabulary or load_catalog("drugs", Vocabulary.from_config)
    return load_catalog("options", lambda raw: OptionCatalog.from_config(raw).checked_against(drugs))


def validated(raw: dict[str, Any], parse: Callable[[dict[str, Any]], T], where: str) -> T:
    """`parse(raw)`; a mapping that breaks a rule is a `ConfigFileError` naming `where` (the file), the entry (by
    its name where it has one) and the rule."""
    try:
        return parse(raw)
    except ConfigFileError:
        raise
    except ValueError as err:  # pydantic's ValidationError is one
        raise ConfigFileError(f"{where}: {_first_problem(err, raw)}") from None


def _first_problem(err: ValueError, raw: Any) -> str:
    """The first problem of a validation error as `key path: message`, list entries named by their name."""
    errors = getattr(err, "errors", None)
    if errors is None:
        return str(err)
    first = errors()[0]
    parts, node = [], raw
    for step in first["loc"]:
        named = node[step] if isinstance(node, list) and isinstance(step, int) and step < len(node) else None
        label = next((named[k] for k in ("generic", "name", "code", "drug") if isinstance(named, dict) and k in named),
                     None)
        parts.append(f"{step} ({label})" if label is not None else str(step))
        node = node.get(step) if isinstance(node, dict) else named
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{'.'.join(parts)}: {message}" if parts else message


#: warnings raised inside libraries that no user of Escalate can act on (message regex, category). Silenced in the
#: CLI, its worker processes and the tests (tests/conftest.py), so every warning left is worth reading.
LIBRARY_NOTICES: tuple[tuple[str, type[Warning]], ...] = (
    ("PySpark does not yet fully support pandas", FutureWarning),  # pandera imports pyspark.pandas under pandas 3
    ("The ``noload`` loader strategy is deprecated", DeprecationWarning),  # MLflow's SQLAlchemy tracking store
    ("The set_(bad|over|under) function will be deprecated", PendingDeprecationWarning),  # SHAP's colormaps
    ("Operation with range is deprecated", Warning),  # MLflow's input-example check (a pandas deprecation)
)


def quiet_library_notices() -> None:
    """Ignore the `LIBRARY_NOTICES` in this process (worker processes call it again: filters are not inherited)."""
    for message, category in LIBRARY_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)


def library_notices_env() -> str:
    """The `LIBRARY_NOTICES` written as plain text, as a `PYTHONWARNINGS` value: for processes others start (Spark's
    Python workers), which raise a notice on an import before any of our code could call `quiet_library_notices`."""
    plain = [(m, c) for m, c in LIBRARY_NOTICES if not set(m) & set(".^$*+?{}[]\\|():,")]
    return ",".join(f"ignore:{m}:{c.__name__}" for m, c in plain)


def one_thread_numerics(stage: Callable[P, T]) -> Callable[P, T]:
    """`stage` run with the BLAS and OpenMP thread pools at one thread. A multi-threaded BLAS splits its sums by
    thread count, so the same deps and params gave other bytes on a machine with more cores (a logistic fit's
    coefficients, then the bundle, overlap and metrics), which dvc.yaml promises they do not; XGBoost's threads
    are its own `n_jobs` param (1 by default), so its fits depend on params only. For every DVC stage's entry."""
    @wraps(stage)
    def pinned(*args: P.args, **kwargs: P.kwargs) -> T:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return stage(*args, **kwargs)

    return pinned
