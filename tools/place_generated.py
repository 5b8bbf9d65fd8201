"""Move buf's Python output into the server package.

protoc names Python modules after proto paths (promptgate/v1/x.proto becomes
the module promptgate.v1.x_pb2), but the server keeps protobuf inside
promptgate.api. This copies .gen/python/promptgate/v1 to
server/promptgate/api/v1 and rewrites the generated imports to match, so the
result is byte-for-byte reproducible and `make lint` can check it is current.
"""

import re
import shutil
import sys
from pathlib import Path

SOURCE = Path(".gen/python/promptgate/v1")
TARGET = Path("server/promptgate/api/v1")
IMPORT = re.compile(r"^(from|import) promptgate\.v1\b", re.MULTILINE)


def main() -> int:
    if not SOURCE.is_dir():
        print(f"{SOURCE} is missing: run buf generate first", file=sys.stderr)
        return 1
    if TARGET.exists():
        shutil.rmtree(TARGET)
    TARGET.mkdir(parents=True)
    (TARGET / "__init__.py").write_text(
        '"""Generated from proto/promptgate/v1 by `make generate`."""\n'
    )
    for path in sorted(SOURCE.iterdir()):
        text = IMPORT.sub(lambda m: f"{m.group(1)} promptgate.api.v1", path.read_text())
        (TARGET / path.name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
