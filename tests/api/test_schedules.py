"""``GET /v1/schedules``: periodic tasks with their next run."""

from __future__ import annotations

import httpx

from conveyor import Conveyor, Schedule


def test_schedules__list_with_previous_and_next_tick(app: Conveyor, http: httpx.Client) -> None:
    assert http.get("/v1/schedules").json() == {"items": []}
    app.schedules.append(Schedule("add", "0 7 * * *", "Europe/Berlin", {"a": 1, "b": 2}, catch_up=0))
    [item] = http.get("/v1/schedules").json()["items"]
    assert item["task"] == "add" and item["cron"] == "0 7 * * *" and item["tz"] == "Europe/Berlin"
    assert item["kwargs"] == {"a": 1, "b": 2}
    assert item["next_run_at"] > item["previous_run_at"]
    assert item["next_run_at"][11:16] in ("06:00", "05:00")  # 07:00 in Berlin, winter or summer time


def test_schedules__one_whose_ticks_cannot_be_computed__listed_with_its_error_not_a_500(
    app: Conveyor, http: httpx.Client
) -> None:
    # built by hand, past periodic's checks (which refuse both)
    app.schedules += [Schedule("add", "0 0 31 2 *"), Schedule("add", "0 7 * * *", "Mars/Olympus"),
                      Schedule("add", "0 7 * * *")]
    response = http.get("/v1/schedules")
    assert response.status_code == 200
    never, nowhere, fine = response.json()["items"]
    assert never["next_run_at"] is None and "failed to find" in never["error"]
    assert nowhere["next_run_at"] is None and "Mars/Olympus" in nowhere["error"]
    assert fine["next_run_at"][11:16] == "07:00" and "error" not in fine
