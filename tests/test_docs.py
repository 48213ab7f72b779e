"""The documentation stays true: the generated config reference is current, links resolve, and an
undocumented config key cannot land."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from megaseqpe.config_docs import ConfigDocsError, parse_field_docs, render

ROOT = Path(__file__).resolve().parents[1]
# [text](target) or ![alt](target), with an optional "title"; the target may be wrapped in <>.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+).+?\1", re.DOTALL)


def test_config_reference_is_current():
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/config.md is out of date with megaseqpe/config.py: run `make docs`"


def _relative_links(markdown: str) -> list[str]:
    """Link targets outside code blocks and code spans, minus web/mail links and pure anchors."""
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [t for t in targets if not t.startswith(("http://", "https://", "mailto:", "#"))]


def test_relative_links_resolve():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for path in files:
        for target in _relative_links(path.read_text(encoding="utf-8")):
            if not (path.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_link_extraction_skips_code_web_links_and_anchors():
    markdown = ("[a](docs/a.md#part) ![b](img/b.png \"title\") [c](https://x.org) [d](#top) [e](mailto:x@y)\n"
                "`[f](code.md)`\n```\n[g](fenced.md)\n```\n")
    assert _relative_links(markdown) == ["docs/a.md#part", "img/b.png"]


def test_undocumented_field_fails_generation():
    source = '''
from dataclasses import dataclass

@dataclass
class Section:
    documented: int = 1
    """Has a docstring."""
    undocumented: str = "x"  # a comment is not a docstring

@dataclass
class Other:
    fine: bool = True
    """Also documented."""
'''
    with pytest.raises(ConfigDocsError, match=r"Section\.undocumented .*no attribute docstring"):
        parse_field_docs(source)


def test_field_docstrings_are_read_from_source():
    source = '''
import dataclasses

@dataclasses.dataclass(frozen=True)
class Section:
    size: int = 1
    """How many,
    over two lines."""

class NotADataclass:
    ignored: int = 0
'''
    assert parse_field_docs(source) == {"Section": {"size": "How many, over two lines."}}
