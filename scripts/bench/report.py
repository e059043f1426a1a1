"""What every benchmark does with its result: JSON to --out (folders made as needed), else stdout."""
from __future__ import annotations

import json
from pathlib import Path


def write_report(result: dict, out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"wrote {out}")
