"""Names that become one folder name of a path: checked before anything is written.

The submission layout builds ``<output>/<system>/<model>/<scenario>/...`` from
names. A name such as ``../../x``, ``/abs`` or ``a/b`` would put a run's files,
and a rerun's clearing of its earlier files, outside ``--output``; so every
such name must be a single path component of safe characters: letters,
digits and ``. _ + -``, starting with a letter or digit (never ``.``, ``..``
or a hidden name), at most 100 characters. MLPerf's system names
(``DGX-A100_A100-SXM4-80GBx1_TRT``) fit.
"""
from __future__ import annotations

import re
from typing import Any

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
RULE = "one folder name of letters, digits and . _ + -, starting with a letter or digit, at most 100 characters"


def path_name_problem(value: Any) -> str | None:
    """None when ``value`` is a safe single path component, else why it is not (for an error message)."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, expected a string: {RULE}"
    if _SAFE.fullmatch(value):
        return None
    if "/" in value or "\\" in value or value in (".", ".."):
        return f"would leave its folder (it is a path, not a name): use {RULE}"
    return f"is not a safe folder name: use {RULE}"
