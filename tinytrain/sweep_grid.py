"""A sweep's grid: TrainConfig fields with lists of values, read from `--grid FIELD=V1,V2` or a JSON file, checked
and expanded into named trials before anything runs."""

from __future__ import annotations

import itertools
import json
import re
import types
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path

from tinytrain.train import ConfigError, TrainConfig, validate_config

FIELD_TYPES = typing.get_type_hints(TrainConfig)
FIELD_ORDER = [field.name for field in fields(TrainConfig)]


class GridError(ConfigError):
    """A grid that cannot run: an unknown field, an empty list, or a value of the wrong type or out of range."""


@dataclass(frozen=True)
class Trial:
    """One fine-tuning run of a sweep."""

    name: str  # its output folder inside the sweep's, unique in the sweep
    row: dict[str, str]  # the table row it is averaged into: its configuration without the seed, as shown
    config: TrainConfig


def _base_type(field: str) -> tuple[type, bool]:
    """(the field's type, whether it may be None)."""
    hint = FIELD_TYPES[field]
    if isinstance(hint, types.UnionType):
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        return members[0], True
    return hint, False


def _type_name(field: str) -> str:
    kind, optional = _base_type(field)
    name = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}[kind]
    return f"{name} or none" if optional else name


def _check_field(field: str, source: str) -> None:
    if field not in FIELD_TYPES:
        raise GridError(f"{source}: no setting '{field}'; a grid sweeps these: {', '.join(FIELD_ORDER)}")


def parse_value(field: str, text: str):
    """A command-line value of `field`, typed as TrainConfig declares it ('none' for a field that may be None)."""
    kind, optional = _base_type(field)
    if optional and text.lower() == "none":
        return None
    try:
        if kind is bool:
            return {"true": True, "false": False}[text.lower()]
        return kind(text)
    except (KeyError, ValueError):
        raise GridError(f"--grid {field}={text}: '{text}' is not {_type_name(field)}; give {_type_name(field)} for "
                        f"{field}") from None


def check_value(field: str, value, source: str):
    """A JSON value of `field`, checked against its type (a whole number is a fine float)."""
    kind, optional = _base_type(field)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise GridError(f"{source}: {field} value {json.dumps(value)} is not {_type_name(field)}; give "
                    f"{_type_name(field)} for {field}")


def parse_grid_arguments(items: list[str]) -> dict[str, list]:
    """{field: values} from `--grid FIELD=V1,V2,...` items."""
    grid: dict[str, list] = {}
    for item in items:
        field, separator, text = item.partition("=")
        field = field.strip().replace("-", "_")
        if not separator:
            raise GridError(f"--grid {item}: write it as FIELD=VALUE1,VALUE2 (for example policy=dense,dynamic)")
        _check_field(field, f"--grid {item}")
        if field in grid:
            raise GridError(f"--grid {field} is given twice; list all its values in one --grid {field}=V1,V2")
        values = [value.strip() for value in text.split(",") if value.strip()]
        if not values:
            raise GridError(f"--grid {item}: no values for {field}; list at least one, as {field}=V1,V2")
        grid[field] = [parse_value(field, value) for value in values]
    return grid


def read_grid_file(path: str | Path) -> dict[str, list]:
    """{field: values} from a JSON object such as {"policy": ["dense", "dynamic"], "seed": [0, 1], "epochs": 2}; a
    single value is a list of one."""
    source = f"--grid-file {path}"
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise GridError(f"{source}: cannot read it ({error.strerror}); check the path") from error
    except json.JSONDecodeError as error:
        raise GridError(f"{source}: not valid JSON ({error.msg}, line {error.lineno}); fix the file") from error
    if not isinstance(document, dict):
        raise GridError(f"{source}: must hold one JSON object of field: [values], as {{\"policy\": [\"dense\", "
                        "\"dynamic\"], \"seed\": [0, 1]}")
    grid = {}
    for field, values in document.items():
        _check_field(field, source)
        values = values if isinstance(values, list) else [values]
        if not values:
            raise GridError(f"{source}: {field} has an empty list; give it at least one value, or leave it out")
        grid[field] = [check_value(field, value, source) for value in values]
    return grid


def merge_grids(*grids: dict[str, list]) -> dict[str, list]:
    merged: dict[str, list] = {}
    for grid in grids:
        for field, values in grid.items():
            if field in merged:
                raise GridError(f"{field} is set both in --grid-file and by --grid; set it in one of them")
            merged[field] = values
    return merged


def _shown(value) -> str:
    """A value as a table cell and a folder name shows it; a file path by its name."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return Path(value).stem
    return str(value)


def _folder_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def grid_trials(grid: dict[str, list], base: TrainConfig = TrainConfig()) -> list[Trial]:
    """Every combination of the grid's values on top of `base`, each checked as a fine-tuning run checks its flags.

    A trial is named from the values of the fields swept (those given several values; every field of the grid when
    none is), in TrainConfig's field order, so that the order of --grid flags does not matter."""
    if not grid:
        raise GridError("the grid is empty; give --grid FIELD=V1,V2 (for example --grid policy=dense,dynamic) or "
                        "--grid-file")
    ordered = [field for field in FIELD_ORDER if field in grid]
    named = [field for field in ordered if len(grid[field]) > 1] or ordered
    trials = []
    for values in itertools.product(*(grid[field] for field in ordered)):
        setting = dict(zip(ordered, values))
        config = replace(base, **setting)
        try:
            validate_config(config)
        except ConfigError as error:
            raise GridError(f"grid: {error}; change that value in the grid") from error
        name = "_".join(f"{_folder_part(field)}-{_folder_part(_shown(setting[field]))}" for field in named)
        row = {field: _shown(setting[field]) for field in named if field != "seed"}
        trials.append(Trial(name, row, config))
    check_unique_names(trials)
    return trials


def check_unique_names(trials: list[Trial]) -> None:
    """Two trials in one folder would resume each other's checkpoints."""
    seen = {}
    for trial in trials:
        if trial.name in seen and seen[trial.name] != trial.config:
            raise GridError(f"two trials would share the folder {trial.name} (file names alike); give the files "
                            "different names")
        if trial.name in seen:
            raise GridError(f"the trial {trial.name} is listed twice; list each value once")
        seen[trial.name] = trial.config


def grid_caption(grid: dict[str, list], trials: list[Trial]) -> str:
    """What a grid's table shows, for the line above it."""
    settings = "; ".join(f"{field} {', '.join(_shown(value) for value in grid[field])}" for field in FIELD_ORDER
                         if field in grid)
    return (f"Sweep of {len(trials)} fine-tuning runs ({settings}; every other setting as scripts/finetune_cifar.py "
            "defaults it). A row is a configuration; with several seeds a cell is the mean ± standard deviation over "
            "them.")
