"""Each committed per-machine fidelity record was made on the machine its folder names.

Sessions land on different CPUs; a run filed under the wrong machine once made a count of
"runs on this VM" wrong. The folder name states the vendor and the ISA; every RESULTS.md
("Machine: ...") and every profile (provenance.machine) under it must agree.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

MACHINES = Path(__file__).resolve().parent.parent / "studies" / "fidelity" / "machines"
FOLDERS = sorted(p for p in MACHINES.iterdir() if p.is_dir())


def expected(folder: str) -> dict:
    """What a folder's name promises: vendor, and ISA features present or absent."""
    vendor = {"intel": "Intel", "amd": "AMD"}[folder.split("-")[0]]
    present = {"avx512": ["avx512f"], "amx": ["avx512f", "amx_tile"]}
    want = [f for key, feats in present.items() if key in folder for f in feats]
    absent = ["avx512f"] if folder.endswith("avx2") else []
    cpus = 16 if folder.endswith("h200-host") else 2  # the GPU machine's host, else the 2-vCPU VMs
    return {"vendor": vendor, "present": want, "absent": absent, "cpus": cpus}


def check(where: Path, cpu: str, cpus: int, isa: set[str], promise: dict) -> None:
    assert cpu.startswith(promise["vendor"]), f"{where}: made on {cpu!r}, filed under {promise['vendor']}"
    assert cpus == promise["cpus"], f"{where}: made on {cpus} CPUs, filed under a machine of {promise['cpus']}"
    for f in promise["present"]:
        assert f in isa, f"{where}: {f} missing from {sorted(isa)}"
    for f in promise["absent"]:
        assert f not in isa, f"{where}: {f} present, the folder says it is absent"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_record_was_made_on_its_folders_machine(folder):
    promise = expected(folder.name)
    results = sorted(folder.rglob("RESULTS*.md"))
    profiles = sorted(folder.rglob("profile.json"))
    assert results and profiles, f"{folder}: no RESULTS.md or profile.json"
    for path in results:
        line = next(l for l in path.read_text(encoding="utf-8").splitlines() if l.startswith("Machine: "))
        cpu, count, features = line[len("Machine: "):].split(", ")[:3]
        check(path, cpu, int(count.split()[0]), set(features.split("/")), promise)
    for path in profiles:
        machine = json.loads(path.read_text(encoding="utf-8"))["provenance"]["machine"]
        check(path, machine["cpu_model"], machine["logical_cpus"], set(machine["isa"]), promise)

