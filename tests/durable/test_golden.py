"""Checked-in snapshots of every program, per Python minor version.

A change to what snapshots contain must be deliberate: it bumps
FORMAT_VERSION and regenerates these files with make_golden.py.
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
from typing import Any

import pytest
from durable_programs import BY_NAME, run, run_to
from make_golden import golden_path, snapshots

from dispatch.experimental.durable import FORMAT_VERSION, IncompatibleStateError

SUPPORTED = [(3, 11), (3, 12), (3, 13)]


def load(version: tuple[int, int]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(golden_path(version).read_text())
    return document


def test_golden_files_exist_for_every_supported_version() -> None:
    for version in SUPPORTED:
        document = load(version)
        assert document["python"] == "{}.{}".format(*version)
        assert document["format"] == FORMAT_VERSION, "regenerate the golden files"
        assert len(document["cases"]) > 50


def test_golden_snapshots_resume() -> None:
    for case in load(sys.version_info[:2])["cases"]:
        program = BY_NAME[case["program"]]
        full = run(program.start())
        obj = program.start()
        prefix, value = run_to(obj, case["suspension"])
        restored = pickle.loads(base64.b64decode(case["snapshot"]))
        assert prefix + run(restored, value) == full, case["program"]
        run(obj, value)


def test_snapshots_are_byte_identical_to_the_golden_ones() -> None:
    recorded = {
        (c["program"], c["suspension"]): c["snapshot"] for c in load(sys.version_info[:2])["cases"]
    }
    for case in snapshots():
        key = (case["program"], case["suspension"])
        assert case["snapshot"] == recorded[key], (
            f"the snapshot of {key} changed: if the format change is deliberate, bump "
            f"FORMAT_VERSION and run tests/durable/make_golden.py on every Python version"
        )


@pytest.mark.parametrize("version", [v for v in SUPPORTED if v != sys.version_info[:2]])
def test_other_versions_golden_snapshots_are_incompatible(version: tuple[int, int]) -> None:
    case = load(version)["cases"][3]
    with pytest.raises(IncompatibleStateError) as error:
        pickle.loads(base64.b64decode(case["snapshot"]))
    message = str(error.value)
    assert "{}.{}".format(*version) in message
    assert "{}.{}".format(*sys.version_info[:2]) in message
