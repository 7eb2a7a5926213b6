#!/usr/bin/env python3
"""Rewrites the README's table of the peer tests listed in
tests/peer/known_failures.txt (between <!-- peer-list ... --> and </details>)."""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
rows = []
for line in (root / "tests/peer/known_failures.txt").read_text().splitlines():
    if not line or line.startswith("#"):
        continue
    test, reason = line.split("\t", 1)
    rows.append(f"| `{test.replace('|', chr(92) + '|')}` | {reason} |")
readme = (root / "README.md").read_text()
start = readme.index("<!-- peer-list")
start = readme.index("\n", start) + 1
end = readme.index("</details>", start)
block = (f"<details><summary>The {len(rows)} tests listed in tests/peer/known_failures.txt, each with its reason"
         "</summary>\n\n| test | reason |\n|---|---|\n" + "\n".join(rows) + "\n\n")
readme = readme[:start] + block + readme[end:]
readme = re.sub(r"(\*\*Now: )\d+( of \d+ pass, \d+ skip[^*]*?, )\d+( are listed)", lambda m: m.group(0), readme)
(root / "README.md").write_text(readme)
print(f"{len(rows)} rows")
