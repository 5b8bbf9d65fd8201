"""Move buf's client output (.gen/clients) into clients/.

- Python: .gen/clients/python/promptgate/v1 becomes
  clients/python/src/promptgate_client/v1, imports rewritten to that package
  (as tools/place_generated.py does for the server).
- Go: .gen/clients/go/promptgate/v1 becomes clients/go/promptgate/v1 (the
  go_package path github.com/promptgate/promptgate/clients/go/promptgate/v1).
- TypeScript: .gen/clients/typescript becomes clients/typescript/src/gen.

Each target directory is replaced whole, so files of removed protos go too and
`make lint` can compare the result with what is committed.
"""

import re
import shutil
import sys
from pathlib import Path

GEN = Path(".gen/clients")
PYTHON_IMPORT = re.compile(r"^(from|import) promptgate\.v1\b", re.MULTILINE)


def _replace(target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)


def place_python() -> None:
    source = GEN / "python/promptgate/v1"
    target = Path("clients/python/src/promptgate_client/v1")
    _replace(target)
    (target / "__init__.py").write_text(
        '"""Generated from proto/promptgate/v1 by `make clients`."""\n'
    )
    for path in sorted(source.iterdir()):
        text = PYTHON_IMPORT.sub(lambda m: f"{m.group(1)} promptgate_client.v1", path.read_text())
        (target / path.name).write_text(text)


def place_tree(source: Path, target: Path) -> None:
    _replace(target)
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)


def main() -> int:
    missing = [
        str(GEN / part)
        for part in ("python/promptgate/v1", "go/promptgate/v1", "typescript")
        if not (GEN / part).is_dir()
    ]
    if missing:
        print(f"{', '.join(missing)} missing: run buf generate first", file=sys.stderr)
        return 1
    place_python()
    place_tree(GEN / "go/promptgate/v1", Path("clients/go/promptgate/v1"))
    place_tree(GEN / "typescript", Path("clients/typescript/src/gen"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
