"""CSV cells that a spreadsheet opens as text, never as a formula (CSV injection).

A DICOM tag or a file name is the sender's text: ``=HYPERLINK(...)`` in a PatientID would
become a live formula in whoever opens the worklist in a spreadsheet. As OWASP advises
(https://owasp.org/www-community/attacks/CSV_Injection), a cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a leading ``'``, which spreadsheets show as text;
NUL characters, which some readers stop at, are removed. A neutral cell stays as it is when
neutralised again.
"""

from __future__ import annotations

from collections.abc import Mapping

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutral(cell: str) -> str:
    """``cell`` without NUL characters, with a leading ``'`` if it would start a formula."""
    cell = cell.replace("\0", "")
    return f"'{cell}" if cell.startswith(FORMULA_STARTS) else cell


def neutral_row(row: Mapping[str, str]) -> dict[str, str]:
    """Every cell of ``row`` made :func:`neutral`."""
    return {key: neutral(value) for key, value in row.items()}
