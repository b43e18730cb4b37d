"""Run planning from the manifests: lineage, staleness, gaps, and refusing to build on a damaged month."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from billing_tiers.errors import PipelineError
from billing_tiers.health import store_status
from billing_tiers.planning import plan_backfill, plan_run
from billing_tiers.store import Store
from tests.extract_factory import row, write_extract
from tests.stores import publish_frames


def publish(store: Store, month: str, run_id: str, built_from: str | None, built_run: str | None) -> None:
    date = dt.date.fromisoformat(f"{month}-01")
    frame = pl.DataFrame({"subscriber_id": ["a"]})
    publish_frames(
        store,
        date,
        run_id,
        {"state": frame},
        {"billing_month": month, "run_id": run_id, "built_from": {"month": built_from, "run_id": built_run}},
    )


def problems(store: Store) -> dict[str, str | None]:
    return {s.month.strftime("%Y-%m"): s.problem for s in store_status(store)}


def test_a_republished_month_makes_every_later_month_stale(tmp_path: Path) -> None:
    store = Store(tmp_path)
    publish(store, "2024-01", "a1", None, None)
    publish(store, "2024-02", "a2", "2024-01", "a1")
    publish(store, "2024-03", "a3", "2024-02", "a2")
    assert set(problems(store).values()) == {None}
    publish(store, "2024-02", "b2", "2024-01", "a1")
    found = problems(store)
    assert found["2024-02"] is None
    assert found["2024-03"] == "stale: 2024-02 was re-published after this month was built"
    with pytest.raises(PipelineError, match="backfill --from 2024-03"):
        plan_run(store, dt.date(2024, 4, 1))
    assert plan_run(store, dt.date(2024, 3, 1)).build_on == dt.date(2024, 2, 1)


def test_an_earlier_first_month_makes_the_old_first_month_stale(tmp_path: Path) -> None:
    store = Store(tmp_path)
    publish(store, "2024-02", "a2", None, None)
    publish(store, "2024-01", "a1", None, None)
    assert problems(store)["2024-02"] is not None and problems(store)["2024-02"].startswith("stale")  # type: ignore[union-attr]


def test_a_run_refuses_to_build_on_a_damaged_month_and_names_the_file_and_the_repair(tmp_path: Path) -> None:
    store = Store(tmp_path)
    publish(store, "2024-01", "a1", None, None)
    publish(store, "2024-02", "a2", "2024-01", "a1")
    manifest = store.manifest_file(dt.date(2024, 2, 1))
    manifest.write_text("{not json")
    with pytest.raises(PipelineError) as refused:
        plan_run(store, dt.date(2024, 3, 1))
    message = str(refused.value)
    assert message.startswith(f"month 2024-02 is incomplete: manifest {manifest} is damaged (not JSON: ")
    assert message.endswith("run `billing-tiers backfill --from 2024-02` first")
    # the damaged month itself may be rerun: that is the repair
    assert plan_run(store, dt.date(2024, 2, 1)).build_on == dt.date(2024, 1, 1)


def test_plans_refuse_gaps_and_name_the_missing_month(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    assert plan_run(store, dt.date(2024, 5, 1)).build_on is None  # empty store: any first month
    publish(store, "2024-01", "a1", None, None)
    with pytest.raises(PipelineError, match="month 2024-02 is missing"):
        plan_run(store, dt.date(2024, 3, 1))
    extracts = tmp_path / "x"
    for month in ("2024-03", "2024-04"):
        write_extract(extracts, month, [row("a")])
    with pytest.raises(PipelineError, match="needs the state of 2024-02, which is not published"):
        plan_backfill(store, extracts, dt.date(2024, 3, 1), None)
    with pytest.raises(PipelineError, match="--to 2024-03 is before --from 2024-04"):
        plan_backfill(store, extracts, dt.date(2024, 4, 1), dt.date(2024, 3, 1))
