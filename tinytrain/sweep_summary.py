"""A sweep's results: one row per configuration, each measure as mean and spread over its seeds, written as one JSON
and one Markdown table."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from tinytrain.atomic import atomic_path
from tinytrain.sweep_grid import Trial


@dataclass(frozen=True)
class Measure:
    key: str  # the field of results.json
    heading: str
    scale: float  # shown as value * scale
    format: str  # of the scaled mean; the spread is shown the same way, without a unit sign


MEASURES = (
    Measure("test_accuracy", "test accuracy", 100.0, "{:.2f}%"),
    Measure("whole_step_peak_bytes", "whole-step peak (B)", 1.0, "{:,.0f}"),
    Measure("feature_bytes", "feature memory (B)", 1.0, "{:,.0f}"),
    Measure("feature_reduction", "reduction vs dense", 100.0, "{:.2f}%"),
    Measure("conv_weight_fraction_per_step", "conv weights per step", 100.0, "{:.2f}%"),
    Measure("coverage", "coverage", 100.0, "{:.1f}%"),
    Measure("seconds_per_step", "ms per step", 1000.0, "{:.1f}"),
)

# What the sweep reads of a results.json; the other fields may grow or change without making old results unreadable.
REQUIRED_FIELDS = {"config", "steps", "test_images"} | {measure.key for measure in MEASURES}


@dataclass(frozen=True)
class TrialOutcome:
    trial: Trial
    status: str  # "skipped" (finished before), "ran", "resumed" (from its checkpoint) or "failed"
    results: dict | None  # its results.json; None when it failed
    error: str | None = None


def read_complete_results(path: Path) -> dict | None:
    """A results.json with every field the sweep reads; None if missing, unreadable or incomplete."""
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return results if isinstance(results, dict) and REQUIRED_FIELDS <= results.keys() else None


@dataclass(frozen=True)
class Summary:
    """Mean and spread (the sample standard deviation, 0 for one seed) of a measure over a row's seeds."""

    mean: float
    spread: float
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), spread, values)


@dataclass(frozen=True)
class SummaryRow:
    configuration: dict[str, str]
    seeds: list[int]
    trials: list[str]
    measures: dict[str, Summary]


def summarize(outcomes: list[TrialOutcome]) -> list[SummaryRow]:
    """One row per configuration, in the order the trials were listed; failed trials are left out."""
    groups: dict[tuple, list[TrialOutcome]] = {}
    for outcome in outcomes:
        if outcome.results is not None:
            groups.setdefault(tuple(outcome.trial.row.items()), []).append(outcome)
    return [SummaryRow(configuration=dict(key), seeds=[outcome.trial.config.seed for outcome in group],
                       trials=[outcome.trial.name for outcome in group],
                       measures={measure.key: Summary.of([outcome.results[measure.key] for outcome in group])
                                 for measure in MEASURES})
            for key, group in groups.items()]


def _cell(measure: Measure, summary: Summary, seeds: int) -> str:
    text = measure.format.format(summary.mean * measure.scale)
    if seeds > 1:
        text += " ± " + measure.format.format(summary.spread * measure.scale).rstrip("%")
    return text


def markdown_table(rows: list[SummaryRow]) -> str:
    """Columns: the configuration's, the seeds when any row has more than one, then every measure; a cell is
    'mean ± standard deviation' over the seeds."""
    columns = list(dict.fromkeys(column for row in rows for column in row.configuration))
    several_seeds = any(len(row.seeds) > 1 for row in rows)
    headings = columns + (["seeds"] if several_seeds else []) + [measure.heading for measure in MEASURES]
    lines = ["| " + " | ".join(headings) + " |",
             "|" + "---|" * (len(headings) - len(MEASURES)) + "---:|" * len(MEASURES)]
    for row in rows:
        cells = [row.configuration.get(column, "") for column in columns]
        if several_seeds:
            cells.append(", ".join(map(str, row.seeds)))
        cells += [_cell(measure, row.measures[measure.key], len(row.seeds)) for measure in MEASURES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(outcomes: list[TrialOutcome], output_dir: Path, caption: str, wall_seconds: float,
                  stem: str = "sweep") -> list[SummaryRow]:
    """<stem>.json (every trial, with its results file relative to `output_dir` so that the folder can move; every
    row; the wall time of the run that wrote it, in which skipped trials cost nothing) and <stem>.md (`caption`,
    then the table) in `output_dir`, atomically."""
    rows = summarize(outcomes)
    document = {
        "caption": caption,
        "wall_seconds": wall_seconds,
        "trials": [{"name": outcome.trial.name, "status": outcome.status, "error": outcome.error,
                    "configuration": outcome.trial.row, "config": asdict(outcome.trial.config),
                    "results_file": f"{outcome.trial.name}/results.json"}
                   for outcome in outcomes],
        "rows": [asdict(row) for row in rows],
    }
    with atomic_path(Path(output_dir) / f"{stem}.json") as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")
    with atomic_path(Path(output_dir) / f"{stem}.md") as temporary:
        temporary.write_text(f"{caption}\n\n{markdown_table(rows)}")
    return rows
