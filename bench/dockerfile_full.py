"""The Dockerfile's install steps with every dependency from the package index (on demand).

No container engine runs here, so ``tests/unit/test_deploy.py`` checks the Dockerfile by
reproducing its steps in a fresh venv that borrows the project's third-party packages (fast,
in CI). This script does the full version: the wheel the Dockerfile builds, installed into a
fresh venv with every dependency resolved from PyPI (minutes), then ``pip check`` and the
same entry-point checks. Run: ``.venv/bin/python bench/dockerfile_full.py``.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import venv
from pathlib import Path

import benchkit  # noqa: F401  (puts the repository on sys.path)

from tests.unit.test_deploy import build_wheel, check_installed


def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="waxflow-dockerfile-") as tmp:
        tmp_path = Path(tmp)
        wheel = build_wheel(tmp_path)
        env_dir = tmp_path / "venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        pip = [str(env_dir / "bin" / "python"), "-m", "pip"]
        subprocess.run([*pip, "install", "-q", str(wheel)], check=True, timeout=1800)
        subprocess.run([*pip, "check"], check=True, timeout=120)
        check_installed(env_dir / "bin", tmp_path)
    print(f"Dockerfile install steps, every dependency from the index: ok "
          f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
