"""Help text laid out for reading: what the commands' --help pages share."""

from __future__ import annotations

import argparse
import textwrap


class ProseHelpFormatter(argparse.HelpFormatter):
    """Prose paragraphs are wrapped to the terminal; a paragraph with indented lines (a list,
    a table's columns, examples) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            if "\n " in paragraph or paragraph.startswith(" "):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width,
                                                initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(paragraphs)


class ProseDefaultsHelpFormatter(ProseHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """ProseHelpFormatter that also shows each option's default."""
