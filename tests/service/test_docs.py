"""Operator docs stay true: the config reference is the schema's own output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_config_reference_doc_matches_the_schema() -> None:
    doc = (REPO / "docs" / "config-reference.md").read_text(encoding="utf-8")
    generated = subprocess.run([sys.executable, "-m", "agentd", "config-reference"],
                               capture_output=True, text=True, timeout=60, check=True).stdout
    table = doc[doc.index("| Key |"):]
    assert table == generated, (
        "docs/config-reference.md is stale: regenerate it with "
        "`agentd config-reference` (replace everything from the table header on)")


def test_operations_doc_covers_the_operator_topics() -> None:
    doc = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    for topic in ("## Install", "## Upgrade", "## Uninstall", "agentd check", "agentd reload",
                  "config-reference.md", "Troubleshooting", "401", "403", "One-way audio",
                  "Prometheus", "openai"):
        assert topic in doc, topic
