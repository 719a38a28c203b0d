"""Replace one ``## `` section of bench/results/README.md, leaving the others as they are."""
from __future__ import annotations

from pathlib import Path

from data_builders.atomic import write_text

README = Path(__file__).resolve().parent / "results" / "README.md"


def replace_section(title: str, body: str, readme: Path = README) -> None:
    """Write ``## title`` + ``body`` at the end of ``readme``, dropping its old copy (atomic)."""
    text = readme.read_text() if readme.exists() else ""
    marker = f"\n## {title}\n"
    if marker in text:
        head, _, rest = text.partition(marker)
        nxt = rest.find("\n## ")
        text = head + (rest[nxt:] if nxt >= 0 else "")
    write_text(readme, text.rstrip("\n") + "\n" + marker + "\n" + body.lstrip("\n"))
