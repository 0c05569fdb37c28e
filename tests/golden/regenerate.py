"""Rewrite the pinned values of `tests/golden/<method>.json` from `compute()`.

    .venv/bin/python tests/golden/regenerate.py            # every method
    .venv/bin/python tests/golden/regenerate.py mvfa       # one

Keeps each file's tolerance and provenance; prints which values moved (relative change).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # tests/, not tests/golden/

import golden  # noqa: E402


def main(names: list[str]) -> None:
    for method in names or golden.methods():
        path = golden.HERE / f"{method}.json"
        doc = golden.load(method) if path.is_file() else {"method": method}
        old = doc.get("values", {})
        new = golden.compute(method)
        for key, value in new.items():
            before = old.get(key)
            if before is None:
                print(f"{method}: {key} = {value!r} (new)")
            elif before != value:
                rel = abs(value - before) / max(abs(before), 1e-300)
                print(f"{method}: {key} {before!r} -> {value!r} (rel {rel:.1e})")
        doc["values"] = new
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path} ({len(new)} values)")


if __name__ == "__main__":
    main(sys.argv[1:])
