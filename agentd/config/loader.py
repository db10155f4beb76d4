"""Loading the configuration file from disk or text."""

from __future__ import annotations

from pathlib import Path

from agentd.config.errors import ConfigError, ConfigIssue
from agentd.config.schema import Config
from agentd.config.validate import validate_document
from agentd.config.yaml_source import parse_yaml


def read_config_text(path: str | Path) -> str:
    """A YAML file's text; an unreadable or non-UTF-8 file is a ConfigError naming it."""
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(source, None, "", f"cannot read: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigIssue(source, None, "", f"not UTF-8 text: {exc.reason}")]
        ) from None


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a YAML config file; raises ConfigError listing every problem.

    Relative paths inside the file (password_file, playback_file) resolve against the
    file's directory.
    """
    text = read_config_text(path)
    return parse_config(text, source=str(path), base_dir=Path(path).resolve().parent)


def parse_config(text: str, source: str = "<string>", base_dir: str | Path | None = None) -> Config:
    """Parse and validate YAML text; `source` names it in errors, `base_dir` anchors paths."""
    document = parse_yaml(text, source)
    return validate_document(
        Config,
        document.data,
        source=source,
        root=document.root,
        base_dir=base_dir,
        prior_issues=document.issues,
    )
