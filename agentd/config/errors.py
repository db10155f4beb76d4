"""Configuration problems: one `ConfigIssue` per mistake, all raised together in a `ConfigError`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One mistake in a configuration file.

    `line` is 1-based and None where no line is known (a dict given in code, a missing
    top-level section); `key` is the dotted key path (``sip.registrar``, ``media.codecs[1]``)
    and empty for file-level problems such as a YAML syntax error.
    """

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration could not be loaded; `errors` lists every problem found."""

    def __init__(self, errors: Iterable[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = sorted(
            errors, key=lambda issue: (issue.line is not None, issue.line or 0, issue.key)
        )
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)
