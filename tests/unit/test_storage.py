"""Storage pieces without a server: path rules (property-based), content types, LocalStorage's folder rules,
signed URLs, the fake's injected failures, and the container's backend selection."""

from __future__ import annotations

import asyncio
import io
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import containers
from shared import storage as storage_module
from shared.config import Settings
from shared.errors import (
    StorageConflictError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
)
from shared.lifecycle import lifespan
from shared.storage import LocalStorage, SupabaseStorage, detect_content_type, validate_bucket, validate_path
from shared.storage._errors import from_os_error
from shared.storage._signing import UrlSigner
from shared.testing.storage import FakeStorage
from tests.fixtures.core import MakeSettings

# No '?': validate_path refuses it (a signed URL cannot serve such an object).
SEGMENT_CHARS = string.ascii_letters + string.digits + "_!-.*'() &$@=;:+,"
segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=20).filter(lambda s: s not in {".", ".."})
good_paths = st.lists(segments, min_size=1, max_size=8).map("/".join).filter(lambda p: len(p) <= 1024)


def test_public_names_are_exported() -> None:
    assert {"Storage", "SupabaseStorage", "LocalStorage", "SignedObject", "validate_path"} <= set(
        storage_module.__all__
    )
    assert all(hasattr(storage_module, name) for name in storage_module.__all__)


@given(st.text(max_size=300))
def test_any_accepted_path_obeys_every_rule(path: str) -> None:
    try:
        validate_path(path)
    except ValidationError as exc:
        field = exc.field
    else:
        field = None
    if field is not None:
        assert "path" == field
        return
    segments_ = path.split("/")
    assert path
    assert not path.startswith("/")
    assert "\\" not in path
    assert all(ord(c) >= 32 and ord(c) != 127 for c in path)
    assert all(s not in {"", ".", ".."} for s in segments_)
    assert len(path.encode()) <= 1024


@given(good_paths)
def test_paths_of_allowed_segments_are_accepted(path: str) -> None:
    assert path == validate_path(path)


@settings(deadline=None)  # it touches the disk: a loaded machine made it "fail" Hypothesis's 200 ms deadline
@given(good_paths)
def test_an_accepted_path_never_leaves_the_local_root(tmp_path_factory: pytest.TempPathFactory, path: str) -> None:
    root = tmp_path_factory.getbasetemp() / "prop-root"
    target = LocalStorage(root, signing_key="k" * 32)._target("media", path)
    assert target.resolve().is_relative_to((root / "media").resolve())


@pytest.mark.parametrize("bucket", ["", ".x", "a/b", "x" * 64, None])
def test_bad_bucket_names_are_refused(bucket: object) -> None:
    with pytest.raises(ValidationError):
        validate_bucket(bucket)


@pytest.mark.parametrize("path", [None, 7, "é", "a%2e%2e", "\x7f", "\x85x"])
def test_non_strings_and_characters_outside_supabase_keys_are_refused(path: object) -> None:
    with pytest.raises(ValidationError):
        validate_path(path)


@pytest.mark.parametrize(
    ("head", "path", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n", "x.bin", "image/png"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "x", "audio/mpeg"),
        (b"just words", "notes.txt", "text/plain"),
        (b"just words", "noextension", "application/octet-stream"),
        (b"", "song.mp3", "audio/mpeg"),
    ],
)
def test_content_type_comes_from_content_then_extension(head: bytes, path: str, expected: str) -> None:
    assert expected == detect_content_type(head, path)


async def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    storage = LocalStorage(tmp_path / "root", signing_key="k" * 32)
    (tmp_path / "root" / "media").mkdir(parents=True)
    (tmp_path / "root" / "media" / "link").symlink_to(outside)
    with pytest.raises(StoragePermissionError):
        await storage.download_file("media", "link/secret.txt")
    with pytest.raises(StoragePermissionError):
        await storage.upload_file("media", "link/new.txt", b"x")
    assert ["secret.txt"] == [p.name for p in outside.iterdir()]


async def test_a_bucket_folder_linked_elsewhere_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "media").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoragePermissionError):
        await LocalStorage(tmp_path / "root", signing_key="k" * 32).exists("media", "a")


async def test_concurrent_writers_of_one_path_never_interleave(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, signing_key="k" * 32)
    bodies = [bytes([i]) * 300_000 for i in range(8)]
    await asyncio.gather(*(storage.upload_file("media", "same.bin", b, upsert=True) for b in bodies))
    assert await storage.download_file("media", "same.bin") in bodies
    assert [] == list((tmp_path / ".partial").iterdir())


async def test_of_concurrent_creators_exactly_one_wins(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, signing_key="k" * 32)
    results = await asyncio.gather(
        *(storage.upload_file("media", "once.bin", bytes([i]) * 1000) for i in range(6)), return_exceptions=True
    )
    assert 5 == sum(isinstance(r, StorageConflictError) for r in results)


async def test_an_object_under_an_object_is_a_conflict_locally(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, signing_key="k" * 32)
    await storage.upload_file("media", "a", b"x")
    with pytest.raises(StorageConflictError):
        await storage.upload_file("media", "a/b", b"y")
    await storage.upload_file("media", "d/e", b"y")
    with pytest.raises(StorageConflictError):
        await storage.upload_file("media", "d", b"z")
    assert not await storage.delete_file("media", "d")


async def test_local_storage_without_a_bucket_list_accepts_any_bucket(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, signing_key=b"k" * 32)
    assert tmp_path.resolve() == storage.root
    assert "LocalStorage(root=" in repr(storage)
    await storage.upload_file("anything", "a.bin", b"x")
    assert (tmp_path / "anything" / "a.bin").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileNotFoundError(2, "gone"), StorageNotFoundError),
        (PermissionError(13, "no"), StoragePermissionError),
        (OSError(28, "No space left on device"), StorageError),
        (OSError(5, "I/O error"), StorageError),
    ],
)
def test_filesystem_errors_are_mapped(error: OSError, expected: type[StorageError]) -> None:
    assert expected is type(from_os_error(error, bucket="media", path="a"))


def test_signed_urls_refuse_foreign_and_malformed_urls() -> None:
    signer = UrlSigner(b"k" * 32, "https://files.example/storage", clock=lambda: 1000.0)
    url = signer.sign("media", "a b/c.png", 60)
    granted = signer.verify(url)
    assert ("media", "a b/c.png") == (granted.bucket, granted.path)
    for bad in (
        "https://other.example/storage/media/a?expires=1&token=x",
        url.split("?")[0],
        url.replace("expires=", "expires=x"),
        url + "&token=again",
    ):
        with pytest.raises(StoragePermissionError):
            signer.verify(bad)
    with pytest.raises(ValidationError):
        UrlSigner(b"short", "memory://x")


async def test_the_fake_fails_as_told_then_recovers() -> None:
    fake = FakeStorage()
    fake.fail_next(StorageUnavailableError("down", retry_after=1.0), times=2)
    for _ in range(2):
        with pytest.raises(StorageUnavailableError):
            await fake.upload_file("media", "a", io.BytesIO(b"x"))
    await fake.upload_file("media", "a", io.BytesIO(b"x"))
    assert [("upload_file", "media", "a")] * 3 == fake.calls


async def test_the_container_selects_the_local_backend_by_default(make_settings: MakeSettings) -> None:
    container = containers.Container()
    container.settings.override(make_settings())
    async with lifespan(container):
        storage = await container.storage()
        assert isinstance(storage, LocalStorage)
        assert storage is await container.storage()


async def test_the_container_selects_supabase_and_closes_its_http_client(make_settings: MakeSettings) -> None:
    container = containers.Container()
    container.settings.override(
        make_settings(storage_backend="supabase", supabase_url="http://127.0.0.1:9", supabase_service_key="sb_secret_x")
    )
    async with lifespan(container):
        storage = await container.storage()
        client = await container.http_client()  # type: ignore[misc]  # an async Resource resolves to a Future
        assert isinstance(storage, SupabaseStorage)
        assert not client.is_closed
    assert client.is_closed


def test_settings_field_names_the_container_reads_exist() -> None:
    fields = Settings.model_fields
    assert {"storage_backend", "storage_local_root", "storage_max_upload_bytes", "storage_chunk_size_bytes"} <= set(
        fields
    )
