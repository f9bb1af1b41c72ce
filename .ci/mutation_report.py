"""Report `make mutate`: killed mutants per module, message-text mutants left out as a class, survivors listed.

A mutant is message text when every token it changes is a string of prose (it holds a space) that is not
SQL: the wording of an error or a log line, which the tests check by its typed fields instead. A mutant that
only changes the letter case of SQL without quoted literals is equivalent (see sql_case_only). Every other
survivor is listed with its diff; one may be excluded only as equivalent, with its reason in EQUIVALENT below.
"""

from __future__ import annotations

import io
import json
import sys
import textwrap
import tokenize
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant

MODULES = ["shared/cost_tracking.py", "shared/_lease.py", "shared/jobs.py", "shared/rules.py"]
TARGET = 0.85
SQL_WORDS = ("select ", "update ", "insert ", " from ", "$1", "public.")
MESSAGE_NAMES = ("shown", "known", "msg")
# Mutants that no test can kill because the program behaves the same, each with the reason.
_TOTAL_ALWAYS_REPLACED = (
    "cost_summary's starting total is always replaced: the grouping set () makes PostgreSQL return the "
    "grand-total row even when the job has no cost rows (and no row at all is JobNotFoundError, raised before)"
)
EQUIVALENT: dict[str, str] = {
    "shared.cost_tracking.xǁCostTrackerǁcost_summary__mutmut_18": _TOTAL_ALWAYS_REPLACED,
    "shared.cost_tracking.xǁCostTrackerǁcost_summary__mutmut_13": _TOTAL_ALWAYS_REPLACED,
    "shared.cost_tracking.xǁCostTrackerǁcost_summary__mutmut_14": _TOTAL_ALWAYS_REPLACED,
    "shared.cost_tracking.xǁCostTrackerǁcost_summary__mutmut_15": _TOTAL_ALWAYS_REPLACED,
}


def _strings(code: str) -> list[tuple[int, str]]:
    return [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(code).readline)]


def message_only(diff: str) -> bool:
    """Return whether the mutant changes nothing but the prose of string literals."""
    before = textwrap.dedent(
        "\n".join(line[1:] for line in diff.splitlines()[2:] if line[:1] in " -" and not line.startswith("@@"))
    )
    after = textwrap.dedent(
        "\n".join(line[1:] for line in diff.splitlines()[2:] if line[:1] in " +" and not line.startswith("@@"))
    )
    try:
        old, new = _strings(before), _strings(after)
    except (tokenize.TokenError, IndentationError):
        return False
    if len(old) != len(new):
        return False
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    # Names that only ever build a message's text (the quoted value, the list of known stages, the message).
    removed = [line[1:].strip() for line in diff.splitlines()[2:] if line.startswith("-")]
    if removed and all(line.startswith(tuple(f"{name} = " for name in MESSAGE_NAMES)) for line in removed):
        return True
    return bool(changed) and all(
        _prose(a) or (a == (tokenize.NAME, "msg") and b == (tokenize.NAME, "None")) for a, b in changed
    )


def _prose(token: tuple[int, str]) -> bool:
    """Return whether a token is a string of prose (a message or a log line), not SQL or a field name."""
    kind, text = token
    return kind == tokenize.STRING and " " in text and not any(word in text.lower() for word in SQL_WORDS)


def sql_case_only(diff: str) -> bool:
    """Return whether the mutant only upper- or lower-cases SQL that holds no quoted literal.

    Equivalent: PostgreSQL folds unquoted keywords and identifiers to lower case, so the statement is the same.
    """
    lines = diff.splitlines()[2:]
    old = [line[1:] for line in lines if line.startswith("-")]
    new = [line[1:] for line in lines if line.startswith("+")]
    if not old or len(old) != len(new):
        return False
    return all(
        a != b and a.lower() == b.lower() and "'" not in a and any(word in a.lower() for word in SQL_WORDS)
        for a, b in zip(old, new, strict=True)
    )


def main() -> int:
    failed = False
    for module in MODULES:
        meta = json.loads(Path("mutants", module + ".meta").read_text())
        codes: dict[str, int | None] = meta["exit_code_by_key"]
        counts = {"killed": 0, "survived": 0, "message": 0, "equivalent": 0, "other": 0}
        survivors = []
        for name, code in sorted(codes.items()):
            if code in (1, 3, 36, 37, -24, 24, 152, 255):  # failed, errored, timed out, refused by the type check
                counts["killed"] += 1
                continue
            diff = get_diff_for_mutant(name, path=Path(module))
            if name in EQUIVALENT or sql_case_only(diff):
                counts["equivalent"] += 1
            elif message_only(diff):
                counts["message"] += 1
            elif code == 0:
                counts["survived"] += 1
                survivors.append((name, diff))
            else:
                counts["other"] += 1
                survivors.append((f"{name} (exit {code})", diff))
        judged = counts["killed"] + counts["survived"] + counts["other"]
        ratio = counts["killed"] / judged if judged else 1.0
        failed = failed or ratio < TARGET
        print(
            f"{module}: {counts['killed']} of {judged} killed ({ratio:.1%}); left out: {counts['message']} "
            f"message-text, {counts['equivalent']} equivalent"
        )
        for name, diff in survivors:
            print(f"\n  survived: {name}\n" + "\n".join("    " + line for line in diff.splitlines()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
