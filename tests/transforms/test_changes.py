"""What a correction changed (SPEC 8): the joined comparison by hand, and the side-by-side one for
versions whose rows line up must give exactly what the join gives."""

from __future__ import annotations

import datetime as dt

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.contract import CHANGES, TIER_ASSIGNMENTS
from transforms.changes import tier_changes

E = dt.date(2026, 4, 1)
UNTIL = dt.date(2027, 3, 31)


def tier_rows(rows: list[dict[str, object]]) -> pl.DataFrame:
    """Tier rows with only the fields a change looks at filled in (the others null)."""
    frame = pl.DataFrame(rows, schema={name: TIER_ASSIGNMENTS.schema[name] for name in rows[0]} if rows else None)
    return frame.with_columns(
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in TIER_ASSIGNMENTS.schema.items()
        if name not in frame.columns
    ).select(list(TIER_ASSIGNMENTS.columns))


def row(program: str, subscriber: str, level: str | None, action: str, card: str | None = None) -> dict[str, object]:
    return {
        "program": program,
        "subscriber_id": subscriber,
        "level": level,
        "action": action,
        "valid_from": E if level else None,
        "valid_until": UNTIL if level else None,
        "card_id": card,
    }


def test_changed_added_and_removed_rows_by_hand() -> None:
    before = tier_rows(
        [row("vip", "a", "gold", "new", "V-a"), row("vip", "b", None, "none"), row("vip", "c", "silver", "retain")]
    )
    after = tier_rows(
        [row("vip", "a", "silver", "new", "V-a"), row("vip", "b", None, "none"), row("vip", "d", None, "none")]
    )
    changes = tier_changes(before=before.lazy(), after=after.lazy()).collect()
    assert changes.schema == CHANGES.schema
    assert changes.select("subscriber_id", "change", "level_before", "level_after").rows() == [
        ("a", "changed", "gold", "silver"),
        ("d", "added", None, None),
        ("c", "removed", "silver", None),
    ]


def test_a_null_against_a_value_is_a_change_and_two_nulls_are_not() -> None:
    before = tier_rows([row("vip", "a", None, "none"), row("vip", "b", "gold", "retain", None)])
    after = tier_rows([row("vip", "a", None, "none"), row("vip", "b", "gold", "retain", "V-b")])
    for aligned in (False, True):
        changes = tier_changes(before=before.lazy(), after=after.lazy(), aligned=aligned).collect()
        assert changes.select("subscriber_id", "card_id_before", "card_id_after").rows() == [("b", None, "V-b")]


LEVELS = st.sampled_from([None, "silver", "gold"])
ACTIONS = st.sampled_from(["none", "new", "retain", "upgrade"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(LEVELS, ACTIONS, LEVELS, ACTIONS, st.booleans(), st.booleans()), min_size=0, max_size=40))
def test_side_by_side_equals_the_join_when_the_rows_line_up(
    pairs: list[tuple[str | None, str, str | None, str, bool, bool]],
) -> None:
    before_rows, after_rows = [], []
    for index, (old_level, old_action, new_level, new_action, old_card, new_card) in enumerate(pairs):
        program = "vip" if index % 2 else "star"
        subscriber = f"s{index // 2}"
        before_rows.append(row(program, subscriber, old_level, old_action, f"C-{index}" if old_card else None))
        after_rows.append(row(program, subscriber, new_level, new_action, f"C-{index}" if new_card else None))
    before = tier_rows(before_rows) if pairs else TIER_ASSIGNMENTS.empty()
    after = tier_rows(after_rows) if pairs else TIER_ASSIGNMENTS.empty()
    joined = tier_changes(before=before.lazy(), after=after.lazy()).collect()
    side_by_side = tier_changes(before=before.lazy(), after=after.lazy(), aligned=True).collect()
    assert side_by_side.schema == joined.schema == CHANGES.schema
    assert side_by_side.equals(joined)
