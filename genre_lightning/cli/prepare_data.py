"""genre-data: scan, verify, group duplicates and split a poster folder, without training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from genre_lightning.cli.common import CONFIG_PATH, show_and_save_config
from genre_lightning.data.annotations import ANNOTATIONS_FILE, REPORT_FILE, read_split_file
from genre_lightning.data.shards import check_shards_target, write_shards
from genre_lightning.utils.errors import exit_on_user_error


def summary_tables(report: dict) -> list[Table]:
    """Per genre: files found, kept, skipped, merged (multi_genre) and ignored; then the skipped files by reason."""
    genres = list(report["per_class"])
    # found = kept + skipped + merged: the merged column appears whenever a file was merged.
    keys = ["found", "kept", "skipped", "merged", "ignored"]
    if not report.get("n_merged"):
        keys.remove("merged")
    counts = Table(title="Data intake")
    for column in ("genre", *keys[:-1], "ignored (not images)"):
        counts.add_column(column, justify="left" if column == "genre" else "right")
    for genre in genres:
        row = report["per_class"][genre]
        counts.add_row(genre, *(str(row.get(k, 0)) for k in keys))
    counts.add_row("all", *(str(sum(report["per_class"][g].get(k, 0) for g in genres)) for k in keys), style="bold")
    tables = [counts]
    if report.get("skipped_by_reason"):
        reasons = Table(title="Skipped, by reason (details per file in data_report.json)")
        for column in ("reason", *genres, "all"):
            reasons.add_column(column, justify="left" if column == "reason" else "right")
        for reason, total in report["skipped_by_reason"].items():
            per_genre = [str(report["per_class"][g]["skipped_by_reason"].get(reason, 0)) for g in genres]
            reasons.add_row(reason, *per_genre, str(total))
        tables.append(reasons)
    return tables


def summary_lines(report: dict) -> list[str]:
    lines = []
    if report.get("unknown_folders"):
        lines.append(f"Folders that are not a configured genre (not used): {', '.join(report['unknown_folders'])}")
    duplicates = report.get("duplicates")
    if duplicates:
        lines.append(
            f"Duplicates (policy {duplicates['policy']}): {duplicates['n_groups']} groups "
            f"({duplicates['n_exact_groups']} byte-identical, {duplicates['n_near_groups']} near-identical), "
            f"{duplicates['n_conflicting_groups']} filed under more than one genre; "
            f"{duplicates['test_items_in_duplicate_groups']} test items are in a group, "
            f"{duplicates['test_items_with_conflicting_labels']} with conflicting genres."
        )
    counts = report["split"]["counts"]
    lines.append(
        f"Split ({'/'.join(counts)}): "
        + ", ".join(f"{genre} {'/'.join(str(counts[s][genre]) for s in counts)}" for genre in counts["train"])
    )
    cv = report["split"].get("cross_validation")
    if cv:
        lines.append(
            f"Cross-validation, {cv['folds']} folds (genre counts per fold): "
            + "; ".join(
                f"{fold}: " + ", ".join(f"{genre} {n}" for genre, n in sorted(per_genre.items()))
                for fold, per_genre in cv["fold_counts"].items()
            )
        )
    return lines


@exit_on_user_error
def prepare(cfg: DictConfig) -> dict:
    """Run the data module's preparation step and print what it found."""
    if cfg.get("shards"):  # before the scan: a place shards cannot go is said at once, with nothing written
        check_shards_target(cfg.shards)
    output_dir = Path(cfg.paths.output_dir)
    show_and_save_config(cfg, output_dir, show=cfg.get("print_config", False))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    report = json.loads((output_dir / REPORT_FILE).read_text())
    console = Console()
    if "per_class" in report:
        for table in summary_tables(report):
            console.print(table)
    for line in summary_lines(report):
        console.print(line)
    console.print(f"Wrote {output_dir / ANNOTATIONS_FILE} and {output_dir / REPORT_FILE}")
    if cfg.get("shards"):
        frame = read_split_file(output_dir / ANNOTATIONS_FILE, datamodule.classes, check_files=False)
        started = time.perf_counter()
        summary = write_shards(frame, cfg.shards, report)
        items = sum(s["items"] for s in summary["splits"].values())
        size = sum(s["bytes"] for s in summary["splits"].values())
        console.print(
            f"Wrote {items} images as LitData shards ({size / 2**20:.1f} MiB) to {cfg.shards} "
            f"in {time.perf_counter() - started:.1f} s",
            soft_wrap=True,
        )
        console.print(f"Train from them with data.shards={cfg.shards}", soft_wrap=True)
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="prepare")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
