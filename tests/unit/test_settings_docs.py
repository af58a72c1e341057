"""Every serve setting is documented: docs/serve.md's settings table has a row for each CONVEYOR_* variable."""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.settings import ENV_PREFIX, ServeSettings

SERVE_MD = Path(__file__).resolve().parents[2] / "docs" / "serve.md"


def test_the_settings_table_lists_every_serve_setting_and_no_other():
    documented = set(re.findall(r"^\| [^|]+ \| `(CONVEYOR_[A-Z_]+)` \|", SERVE_MD.read_text(), re.M))
    settings = {ENV_PREFIX + name.upper() for name in ServeSettings.model_fields}
    assert settings - documented == set(), "settings without a row in docs/serve.md"
    assert documented - settings == set(), "rows in docs/serve.md for settings that do not exist"
