"""The README's configuration table lists exactly the Settings fields, with their defaults."""

from __future__ import annotations

import re

from stream.settings import PROJECT_ROOT, Settings

ROW = re.compile(r"^\| `CLICKSCORE_([A-Z0-9_]+)` \| `([^`]*)` \|", re.MULTILINE)


def _readme_rows() -> dict[str, str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    return {name.lower(): default for name, default in ROW.findall(text)}


def test_every_setting_is_documented_and_nothing_else() -> None:
    assert set(_readme_rows()) == set(Settings.model_fields)


def test_documented_defaults_match() -> None:
    rows = _readme_rows()
    for name, field in Settings.model_fields.items():
        default = field.default
        if hasattr(default, "relative_to"):  # paths are documented relative to the project
            default = default.relative_to(PROJECT_ROOT)
        assert rows[name] == str(default), name
