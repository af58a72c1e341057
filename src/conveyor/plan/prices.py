"""The dated price table (`conveyor/data/prices.toml`), and a team's own file over it (`--prices FILE`)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.errors import InvalidInput

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "prices.toml"


@dataclass(frozen=True)
class Prices:
    """Sections of figures by offering; `checked` is the day they were last compared with their sources."""

    sections: dict[str, dict[str, Any]]
    origin: str

    @property
    def checked(self) -> str:
        return str(self.sections["table"]["checked"])

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]


def load_prices(override: Path | None = None) -> Prices:
    """The shipped table, with the keys `override` sets replacing its own (an unknown key is refused)."""
    sections = tomllib.loads(SHIPPED.read_text())
    origin = f"{SHIPPED.name} (checked {sections['table']['checked']})"
    if override is None:
        return Prices(sections, origin)
    try:
        given = tomllib.loads(override.read_text())
    except OSError as exc:
        raise InvalidInput(f"--prices {override}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"--prices {override}: not TOML: {exc}") from None
    for section, values in given.items():
        if section not in sections or not isinstance(values, dict):
            raise InvalidInput(f"--prices {override}: unknown section [{section}]; known: {', '.join(sections)}")
        for key, value in values.items():
            if key not in sections[section]:
                raise InvalidInput(f"--prices {override}: [{section}] has no key {key!r}")
            if isinstance(sections[section][key], int | float) and not isinstance(value, int | float):
                raise InvalidInput(f"--prices {override}: [{section}] {key} must be a number, got {value!r}")
            sections[section][key] = value
    checked = sections["table"]["checked"]
    return Prices(sections, f"{SHIPPED.name} with {override} (checked {checked})")
