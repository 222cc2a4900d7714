"""Every file a package.json of the repository names exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted(
    path for path in ROOT.glob("clients/**/package.json") if "node_modules" not in path.parts
)
# The fields of package.json that name files of the package (npm's and Node's documentation).
FILE_FIELDS = ("main", "module", "types", "typings", "browser", "bin", "exports", "files")


def named_paths(value: object) -> list[str]:
    """Every path in a field's value: a string, or the strings inside its objects and lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [path for item in value.values() for path in named_paths(item)]
    if isinstance(value, list):
        return [path for item in value for path in named_paths(item)]
    return []


def test_there_is_a_manifest_to_check():
    assert ROOT / "clients/ts/package.json" in MANIFESTS


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_file_a_package_json_names_exists(manifest):
    package = json.loads(manifest.read_text())
    named = {
        (field, path)
        for field in FILE_FIELDS
        for path in named_paths(package.get(field))
        # `files` takes globs; an exports pattern ("./*") maps subpaths, not one file.
        if "*" not in path
    }
    globs = [path for path in named_paths(package.get("files")) if "*" in path]

    assert {
        (field, path) for field, path in named if not (manifest.parent / path).exists()
    } == set()
    assert [glob for glob in globs if not any(manifest.parent.glob(glob))] == []
