"""The public face of shared.validation: the import paths, and docstrings that name what is raised."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import shared.validation
from shared.validation import validate_audio_file, validate_file_size, validate_prompt

VALIDATORS = [validate_audio_file, validate_file_size, validate_prompt]


def test_public_import_paths_stay() -> None:
    names = {"validate_audio_file", "validate_prompt", "validate_file_size", "AudioFileInfo", "ACCEPTED_AUDIO"}
    assert names <= set(shared.validation.__all__)
    assert all(hasattr(shared.validation, name) for name in shared.validation.__all__)


@pytest.mark.parametrize("validator", VALIDATORS, ids=lambda function: function.__name__)
def test_docstring_names_only_validation_error(validator: object) -> None:
    """Issue 11 point 7: the Raises section names ValidationError, the only exception that leaves validation."""
    doc = inspect.getdoc(validator) or ""
    raises = doc.split("Raises:", 1)[1]
    named = set(re.findall(r"^\s{4}(\w+):", raises, flags=re.MULTILINE))
    assert {"ValidationError"} == named


def test_mutagen_is_imported_in_one_module() -> None:
    """An upgrade of mutagen that moves its private modules breaks one file."""
    package = Path(shared.validation.__file__).parent
    pattern = re.compile(r"^(from|import) mutagen", re.MULTILINE)
    assert {"_mutagen.py"} == {path.name for path in package.glob("*.py") if pattern.search(path.read_text())}
