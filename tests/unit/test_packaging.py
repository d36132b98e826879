"""The distribution: one top-level package, and the layer contract covers the whole core."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("cli", "dataflows", "operators", "connectors", "recovery")


def test_wheel_installs_exactly_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("waxflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"waxflow"}, tops
    # the card's folders are inside the package, with their data files
    for sub in ("dataflows", "operators", "connectors", "recovery"):
        assert f"waxflow/{sub}/__init__.py" in names
    assert "waxflow/dataflows/flows/orders_realtime.yaml" in names
    assert "waxflow/operators/checkpoint.py" in names


def test_every_core_module_is_bound_by_the_core_contract() -> None:
    """A module added to the core (directly in waxflow/) must be listed in the contract that
    keeps Bytewax, confluent-kafka and the upper layers out of the core."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (core,) = [c for c in config["contracts"] if c["type"] == "forbidden"]
    modules = {f"waxflow.{p.stem}" for p in (ROOT / "waxflow").glob("*.py")
               if p.stem not in ("__init__", "__main__", "cli")}
    assert modules == set(core["source_modules"])
    assert {"bytewax", "confluent_kafka"} <= set(core["forbidden_modules"])
    assert {f"waxflow.{name}" for name in LAYERS} <= set(core["forbidden_modules"])
