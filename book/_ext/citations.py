"""Sphinx extension: two papers with the same authors and year are told apart by a letter.

``references.bib`` gives each such paper a year with a letter, in order of publication (``2025a`` for the
predecessor, arXiv:2502.20408, ``2025b`` for the pruning paper, arXiv:2508.05239). The author-year citations
print the year field as it is ("Liu et al. [2025a]"); this extension registers the bibliography style
``alpha-year-suffix`` (``bibtex_default_style`` in ``_config.yml``), pybtex's ``alpha`` with labels that keep
two digits of the year before the letter ("[LGS+25a]" where ``alpha`` would print "[LGS+5a]").
Checked with sphinxcontrib-bibtex 2.7.0 and pybtex 0.26.1 (``requirements.lock``).
"""

from __future__ import annotations

import re
from typing import Any

from pybtex.plugin import register_plugin
from pybtex.style.formatting.alpha import Style as AlphaStyle
from pybtex.style.labels.alpha import LabelStyle as AlphaLabelStyle

STYLE = "alpha-year-suffix"
_YEAR = re.compile(r"(?P<year>\d{4})(?P<letter>[a-z])")


class YearSuffixLabelStyle(AlphaLabelStyle):
    """``alpha`` labels whose year keeps its two last digits and its letter: ``LNX+25b``."""

    def format_label(self, entry: Any) -> str:
        label = super().format_label(entry)
        match = _YEAR.fullmatch(entry.fields.get("year", ""))
        if match is None:
            return label
        return label[:-2] + match["year"][-2:] + match["letter"]  # alpha appended year[-2:], e.g. "5b"


class YearSuffixStyle(AlphaStyle):
    """pybtex's ``alpha`` bibliography style with :class:`YearSuffixLabelStyle` labels."""

    default_label_style = STYLE


def setup(app: Any) -> dict[str, Any]:
    register_plugin("pybtex.style.labels", STYLE, YearSuffixLabelStyle, force=True)
    register_plugin("pybtex.style.formatting", STYLE, YearSuffixStyle, force=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
