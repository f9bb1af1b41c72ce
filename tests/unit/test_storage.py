"""Storage pieces without a server: path rules (property-based), content types, LocalStorage's folder rules,
signed URLs, the fake's injected failures, and the container's backend selection."""

from __future__ import annotations

import asyncio
import ctypes
import io
import os
import string
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import containers
from shared import storage as storage_module
from shared.config import Settings
from shared.errors import (
    ConfigError,
    StorageConflictError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
)
from shared.lifecycle import lifespan
from shared.storage import LocalStorage, SupabaseStorage, detect_content_type, validate_bucket, validate_path
from shared.storage import _local as local_module
from shared.storage._common import open_body
from shared.storage._errors import from_os_error
from shared.storage._signing import UrlSigner
from shared.storage._supabase import tus_chunk_size
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


@settings(max_examples=60, deadline=None)  # file I/O per example: no timing claims
@given(good_paths)
def test_an_accepted_path_is_stored_under_the_local_root_and_nowhere_else(path: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "root").mkdir()
        storage = LocalStorage(base / "root", signing_key="k" * 32)
        try:
            asyncio.run(storage.upload_file("media", path, b"content"))
        except StorageConflictError:
            return  # an earlier segment named like the leaf, e.g. "a/a" is fine but "a" then "a/b" is not
        assert ["root"] == [p.name for p in base.iterdir()]
        stored = [p for p in (base / "root").rglob("*") if p.is_file()]
        assert [(base / "root" / "media" / path).resolve()] == [p.resolve() for p in stored]
        assert b"content" == asyncio.run(storage.download_file("media", path))


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


async def test_the_container_selects_the_local_backend_by_default(make_settings: MakeSettings, pg_dsn: str) -> None:
    container = containers.Container()
    container.settings.override(make_settings(database_url=pg_dsn))
    async with lifespan(container):
        storage = container.storage()
        assert isinstance(storage, LocalStorage)
        assert storage is container.storage()


def _supabase_container(make_settings: MakeSettings, pg_dsn: str, **settings: object) -> containers.Container:
    """A container whose storage is SupabaseStorage at an address nothing answers (nothing is sent)."""
    container = containers.Container()
    container.settings.override(
        make_settings(
            database_url=pg_dsn,
            storage_backend="supabase",
            supabase_url="http://127.0.0.1:9",
            supabase_service_key="sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz",
            **settings,
        )
    )
    return container


async def test_the_container_selects_supabase_and_closes_its_http_client(
    make_settings: MakeSettings, pg_dsn: str
) -> None:
    container = _supabase_container(make_settings, pg_dsn)
    async with lifespan(container):
        storage = container.storage()
        client = container.http_client()
        assert isinstance(storage, SupabaseStorage)
        assert not client.is_closed
    assert client.is_closed


@pytest.mark.parametrize(("chunk_mb", "expected"), [(None, None), (64, 64 * 1024 * 1024)])
async def test_the_container_passes_storage_tus_chunk_mb_to_supabase_storage(
    make_settings: MakeSettings, pg_dsn: str, chunk_mb: int | None, expected: int | None
) -> None:
    container = _supabase_container(make_settings, pg_dsn, storage_tus_chunk_mb=chunk_mb)
    async with lifespan(container):
        storage = container.storage()
        assert isinstance(storage, SupabaseStorage)
        assert expected == storage._tus_chunk_size


MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("url", "chunk_size", "expected"),
    [
        ("https://abcdefghij.supabase.co", None, 6 * MIB),
        ("https://abcdefghij.SUPABASE.in/", None, 6 * MIB),
        ("http://127.0.0.1:54321", None, None),  # self-hosted: the whole body in one PATCH
        ("https://storage.example.com", None, None),
        ("https://supabase.co.example.com", None, None),
        ("https://notsupabase.co", None, None),
        ("https://abcdefghij.supabase.co", 64 * MIB, 64 * MIB),  # an explicit size always wins
        ("http://127.0.0.1:54321", 6 * MIB, 6 * MIB),
    ],
)
def test_the_tus_chunk_is_6_mib_on_supabases_platform_and_the_whole_body_elsewhere(
    url: str, chunk_size: int | None, expected: int | None
) -> None:
    assert expected == tus_chunk_size(url, chunk_size)


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="preadv2's RWF_NOWAIT is Linux's")
async def test_a_body_reads_cached_pieces_at_once_and_the_rest_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the file is dropped from the page cache, the pieces still arrive whole, through the thread."""
    source = tmp_path / "body.bin"
    data = os.urandom(3 * 1024 * 1024 + 5)
    with source.open("wb") as sink:
        sink.write(data)
        os.fsync(sink.fileno())  # written back: no page is locked for writeback, which RWF_NOWAIT would wait for
    threaded: list[int] = []
    async with open_body(source, limit=len(data)) as body:
        read_in_thread = body._read_in_thread

        async def counted(offset: int, length: int) -> bytes:
            threaded.append(offset)
            return await read_in_thread(offset, length)

        monkeypatch.setattr(body, "_read_in_thread", counted)
        assert data[1000:] == b"".join([chunk async for chunk in body.chunks(1024 * 1024, offset=1000)])
        assert [] == threaded  # just written: the page cache holds it all
        with source.open("rb") as file:
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert data == b"".join([chunk async for chunk in body.chunks(1024 * 1024)])
        assert 0 in threaded


def test_storage_tus_chunk_mb_is_refused_below_5_mib(make_settings: MakeSettings) -> None:
    with pytest.raises(ConfigError, match="STORAGE_TUS_CHUNK_MB"):
        make_settings(storage_tus_chunk_mb=4)
    assert None is make_settings(storage_tus_chunk_mb="").storage_tus_chunk_mb


def test_settings_field_names_the_container_reads_exist() -> None:
    fields = Settings.model_fields
    assert {"storage_backend", "storage_local_root", "storage_max_upload_bytes", "storage_tus_chunk_mb"} <= set(fields)


# --- the path is checked where it is used ---

LONG = "x" * 300  # one name over the file system's 255 bytes


def _methods(storage: LocalStorage, path: str, tmp_path: Path) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "upload_file": lambda: storage.upload_file("media", path, b"x"),
        "download_file": lambda: storage.download_file("media", path),
        "download_to": lambda: storage.download_to("media", path, tmp_path / "copy.bin"),
        "get_signed_url": lambda: storage.get_signed_url("media", path),
        "exists": lambda: storage.exists("media", path),
        "delete_file": lambda: storage.delete_file("media", path),
    }


@pytest.mark.parametrize("path", [LONG, f"jobs/{LONG}/a.bin", f"jobs/{'é' * 128}.bin".replace("é", "e" * 2)])
@pytest.mark.parametrize(
    "method", ["upload_file", "download_file", "download_to", "get_signed_url", "exists", "delete_file"]
)
async def test_a_name_too_long_for_the_file_system_is_a_validation_error(
    tmp_path: Path, path: str, method: str
) -> None:
    storage = LocalStorage(tmp_path / "root", signing_key="k" * 32)
    await storage.upload_file("media", "jobs/other.bin", b"x")  # the folders exist: the OS would be asked
    with pytest.raises(ValidationError) as caught:
        await _methods(storage, path, tmp_path)[method]()
    assert "path" == caught.value.field
    assert "255 bytes" in str(caught.value)
    assert not (tmp_path / "copy.bin").exists()


async def test_a_name_the_file_system_refuses_as_too_long_is_a_validation_error(tmp_path: Path) -> None:
    """Under NAME_MAX for us but not for a file system with a smaller limit: the OS's ENAMETOOLONG is mapped."""
    storage = LocalStorage(tmp_path / "root", signing_key="k" * 32)
    fifo_free_limit = local_module.NAME_MAX
    try:
        local_module.NAME_MAX = 10_000  # as if the limit were unknown: the file system's own refusal must map
        for method in _methods(storage, LONG, tmp_path).values():
            with pytest.raises(ValidationError):
                await method()
    finally:
        local_module.NAME_MAX = fifo_free_limit


async def test_a_symlinked_object_is_never_followed(tmp_path: Path) -> None:
    """Reads through a symlink are refused; writes and deletes act on the link's name, never on its target."""
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    storage = LocalStorage(tmp_path / "root", signing_key="k" * 32)
    await storage.upload_file("media", "a.bin", b"inside")
    link = tmp_path / "root" / "media" / "link.bin"
    link.symlink_to(outside)
    for call in (
        storage.download_file("media", "link.bin"),
        storage.download_to("media", "link.bin", tmp_path / "copy"),
        storage.exists("media", "link.bin"),
        storage.get_signed_url("media", "link.bin"),
    ):
        with pytest.raises(StoragePermissionError):
            await call
    with pytest.raises(StorageConflictError):
        await storage.upload_file("media", "link.bin", b"new")  # the name is taken
    assert await storage.delete_file("media", "link.bin")
    assert not link.is_symlink()
    link.symlink_to(outside)
    await storage.upload_file("media", "link.bin", b"new", upsert=True)  # replaces the link itself
    assert "outside" == outside.read_text()
    assert b"new" == await storage.download_file("media", "link.bin")
    assert not (tmp_path / "copy").exists()


async def test_a_fifo_in_the_folder_is_not_an_object_and_does_not_hang(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root", signing_key="k" * 32)
    await storage.upload_file("media", "a.bin", b"x")
    os.mkfifo(tmp_path / "root" / "media" / "pipe")
    assert not await storage.exists("media", "pipe")
    with pytest.raises(StorageNotFoundError):
        await storage.download_file("media", "pipe")


def _exchange(first: Path, second: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): the folder is never missing, only swapped."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(first), at_fdcwd, bytes(second), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class FolderSwapper(threading.Thread):
    """Swap ``folder`` with a symlink to ``outside`` and back, as fast as it can, until stopped."""

    def __init__(self, folder: Path, outside: Path) -> None:
        super().__init__(daemon=True)
        self._folder, self._link = folder, folder.with_name(folder.name + ".swap")
        self._link.symlink_to(outside, target_is_directory=True)
        self._halt = threading.Event()
        self.swaps = 0

    def run(self) -> None:
        while not self._halt.is_set():
            _exchange(self._folder, self._link)  # now the folder's name is the symlink
            _exchange(self._folder, self._link)  # and back
            self.swaps += 2

    def __enter__(self) -> FolderSwapper:
        try:
            _exchange(self._folder, self._link)
            _exchange(self._folder, self._link)
        except OSError as exc:  # pragma: no cover - every Linux file system in CI supports it
            pytest.skip(f"renameat2(RENAME_EXCHANGE) is not supported here: {exc}")
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._halt.set()
        self.join()


@pytest.fixture
def swapped(tmp_path: Path) -> tuple[LocalStorage, Path, Path]:
    """Local storage whose ``media/jobs`` folder a thread keeps swapping for a symlink to ``outside``."""
    storage = LocalStorage(tmp_path / "root", signing_key="k" * 32)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "object.bin").write_bytes(b"OUTSIDE")
    return storage, tmp_path / "root" / "media" / "jobs", outside


async def test_uploads_never_land_outside_the_root_while_a_parent_is_swapped(
    swapped: tuple[LocalStorage, Path, Path],
) -> None:
    storage, folder, outside = swapped
    await storage.upload_file("media", "jobs/object.bin", b"inside")
    outcomes: list[object] = []
    with FolderSwapper(folder, outside) as swapper:
        for round_ in range(20):
            outcomes += await asyncio.gather(
                *(
                    storage.upload_file("media", f"jobs/up-{round_}-{i}.bin", b"u" * 5000, upsert=i % 2 == 0)
                    for i in range(10)
                ),
                return_exceptions=True,
            )
    assert swapper.swaps > 0
    assert [] == [o for o in outcomes if not isinstance(o, str | StoragePermissionError)]
    assert ["object.bin"] == sorted(p.name for p in outside.iterdir())
    assert b"OUTSIDE" == (outside / "object.bin").read_bytes()
    stored = {p.name for p in folder.iterdir()}
    assert {Path(o).name for o in outcomes if isinstance(o, str)} <= stored


async def test_downloads_never_read_outside_the_root_while_a_parent_is_swapped(
    swapped: tuple[LocalStorage, Path, Path], tmp_path: Path
) -> None:
    storage, folder, outside = swapped
    await storage.upload_file("media", "jobs/object.bin", b"inside")
    reads: list[object] = []
    with FolderSwapper(folder, outside) as swapper:
        for round_ in range(30):
            copies = [tmp_path / f"copy-{round_}-{i}" for i in range(4)]
            reads += await asyncio.gather(
                *(storage.download_file("media", "jobs/object.bin") for _ in range(6)),
                *(storage.download_to("media", "jobs/object.bin", copy) for copy in copies),
                *(storage.exists("media", "jobs/object.bin") for _ in range(2)),
                return_exceptions=True,
            )
            reads += [copy.read_bytes() for copy in copies if copy.exists()]
    assert swapper.swaps > 0
    assert [] == [
        r for r in reads if r not in (b"inside", len(b"inside"), True) and not isinstance(r, StoragePermissionError)
    ]


async def test_deletes_never_remove_a_file_outside_the_root_while_a_parent_is_swapped(
    swapped: tuple[LocalStorage, Path, Path],
) -> None:
    storage, folder, outside = swapped
    await storage.upload_file("media", "jobs/object.bin", b"inside")
    outcomes: list[object] = []
    with FolderSwapper(folder, outside) as swapper:
        for _ in range(60):
            outcomes += await asyncio.gather(
                storage.upload_file("media", "jobs/object.bin", b"inside", upsert=True),
                storage.delete_file("media", "jobs/object.bin"),
                return_exceptions=True,
            )
    assert swapper.swaps > 0
    assert [] == [o for o in outcomes if not isinstance(o, str | bool | StoragePermissionError)]
    assert b"OUTSIDE" == (outside / "object.bin").read_bytes()
    assert ["object.bin"] == sorted(p.name for p in outside.iterdir())
