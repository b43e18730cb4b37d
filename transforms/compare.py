"""Comparing two evaluations of the same month (published and simulated): level counts, the
transition matrix between them, and the card events only one of them has."""

from __future__ import annotations

import polars as pl

_NONE = "(none)"
_CARD_KEYS = ["program", "subscriber_id", "event", "reason", "level", "card_id"]


def level_counts(*, published: pl.LazyFrame, simulated: pl.LazyFrame) -> pl.LazyFrame:
    """Members per program and level in each version (``published``, ``simulated``, 0 when none)."""

    def count(frame: pl.LazyFrame, name: str) -> pl.LazyFrame:
        return frame.group_by("program", pl.col("level").fill_null(_NONE)).agg(pl.len().alias(name))

    return (
        count(published, "published")
        .join(count(simulated, "simulated"), on=["program", "level"], how="full", coalesce=True)
        .with_columns(pl.col("published", "simulated").fill_null(0).cast(pl.Int64))
        .sort("program", "level")
    )


def transition_matrix(*, published: pl.LazyFrame, simulated: pl.LazyFrame) -> pl.LazyFrame:
    """How many members go from each published level to each simulated level, per program."""
    keys = ["program", "subscriber_id"]
    return (
        published.select(*keys, pl.col("level").fill_null(_NONE).alias("published_level"))
        .join(
            simulated.select(*keys, pl.col("level").fill_null(_NONE).alias("simulated_level")),
            on=keys,
            how="full",
            coalesce=True,
        )
        .with_columns(pl.col("published_level", "simulated_level").fill_null(_NONE))
        .group_by("program", "published_level", "simulated_level")
        .agg(pl.len().alias("members"))
        .sort("program", "published_level", "simulated_level")
    )


def card_differences(*, published: pl.LazyFrame, simulated: pl.LazyFrame) -> pl.LazyFrame:
    """Card events in one version and not the other, with ``version`` naming the one that has it."""
    only_published = published.select(_CARD_KEYS).join(simulated.select(_CARD_KEYS), on=_CARD_KEYS, how="anti")
    only_simulated = simulated.select(_CARD_KEYS).join(published.select(_CARD_KEYS), on=_CARD_KEYS, how="anti")
    return pl.concat(
        [
            only_published.with_columns(pl.lit("published only").alias("version")),
            only_simulated.with_columns(pl.lit("simulated only").alias("version")),
        ]
    ).sort("program", "subscriber_id", "version", "event")
