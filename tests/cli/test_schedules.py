"""``conveyor schedules``: every schedule of the app, even one whose ticks cannot be computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.cli import main

BROKEN_APP = '''
from conveyor import Context, Conveyor, Schedule

app = Conveyor()

@app.periodic("0 7 * * *", tz="Europe/Berlin")
def digest(ctx: Context) -> None: ...

# built by hand, past periodic's checks (which refuse it): February 31st never comes
app.schedules.append(Schedule("digest", "0 0 31 2 *"))
'''


def test_schedules__a_schedule_that_never_fires__shown_with_its_error_the_others_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken_sched_app.py").write_text(BROKEN_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["schedules", "--app", "broken_sched_app:app", "--url", f"sqlite:///{tmp_path}/c.db"]

    assert main([*args, "--json"]) == 0
    digest, never = json.loads(capsys.readouterr().out)["items"]
    assert digest["next_run_at"][11:16] in ("05:00", "06:00") and never["next_run_at"] is None
    assert "failed to find" in never["error"]

    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "failed to find" in out and "0 7 * * *" in out and "Traceback" not in err
