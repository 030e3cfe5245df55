"""Rewrite README.md's configuration table from the settings (`--check`: fail if it differs).

The table sits between `<!-- settings-table:start ... -->` and `<!-- settings-table:end -->`;
`dicomweb-server config --markdown` prints the same table.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dicomweb_server.cli.config import markdown_table, readme_table, write_readme_table

README = Path(__file__).resolve().parents[1] / "README.md"


def main(argv: list[str]) -> int:
    if "--check" in argv:
        if readme_table(README) != markdown_table():
            print("README.md's configuration table differs: python tools/settings_table.py")
            return 1
        return 0
    changed = write_readme_table(README)
    print("README.md updated" if changed else "README.md is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
