"""The app's backend URL: given, else ``CONVEYOR_URL``, else the embedded default."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor.core.errors import ConfigurationError


@pytest.mark.parametrize("url", ["", "  ", 5, b"sqlite:///x.db"])
def test_url__given_but_empty_or_not_a_str__refused_not_the_default(url, monkeypatch, tmp_path):
    """``Conveyor("")`` used ./conveyor.db as if no URL were given; ``Conveyor(5)`` raised AttributeError."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVEYOR_URL", f"sqlite:///{tmp_path}/env.db")
    with pytest.raises(ConfigurationError, match=r"^the backend URL must be a non-empty str such as "
                                                 r"'sqlite:///conveyor.db', not "):
        Conveyor(url)


def test_url__none__conveyor_url_and_an_empty_one_counts_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVEYOR_URL", f"sqlite:///{tmp_path}/env.db")
    assert Conveyor().url == f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("CONVEYOR_URL", "")  # as a deployment tool sets a variable it was given no value for
    assert Conveyor().url == "sqlite:///conveyor.db"
    monkeypatch.delenv("CONVEYOR_URL")
    assert Conveyor(None).url == "sqlite:///conveyor.db"
