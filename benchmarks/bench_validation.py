"""Audio validation benchmark, side by side with its baselines in the same run.

1. Validations per second on 3-minute MP3, WAV and FLAC files (made here with sox, lame and flac): our
   ``validate_audio_file`` against mutagen's own class for the format (``MP3``/``WAVE``/``FLAC``: the bare
   header parse our checks are built on, which checks no truncation and loads tags and cover art) and
   against ``ffprobe`` (what a service would otherwise shell out to). Rounds are interleaved so the
   machine's noise falls on every contender alike; the best round of each is reported.
2. Bytes read per validation, counted by a file object that wraps the file.
3. Peak Python memory (tracemalloc) validating a 500 MB WAV, against mutagen's ``WAVE`` on the same file.
4. The crafted files of issue 14 at full size (a FLAC with max_framesize 16 MB and a 16 MB tail of fake frame
   headers, 3 million chained ID3 tags, 10 MB of MP3 frames of 24 bytes, 10 MB of FLAC frames of 16 samples,
   ...) and real files of about 10 MB: the
   validation time per 10 MB (best of 3) and the bytes read over the file's size, beside one plain read of the
   same file (the baseline: reading it once with nothing checked).
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.wave import WAVE

from shared.errors import ValidationError
from shared.validation import validate_audio_file

__all__ = ["main"]

SECONDS = 180
ROUNDS = 3
BUDGET_SECONDS = 0.5  # per contender per round
LARGE_WAV_BYTES = 500 * 1024 * 1024
MUTAGEN: dict[str, Callable[[Any], object]] = {"mp3": MP3, "wav": WAVE, "flac": FLAC}


class _CountingFile(io.FileIO):
    """A file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def _make_corpus(directory: Path) -> dict[str, Path]:
    wav = directory / "song.wav"
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(wav), "synth", str(SECONDS), "sine", "200-2000"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["lame", "--quiet", "-V", "2", str(wav), str(directory / "song.mp3")], check=True)
    subprocess.run(["flac", "--silent", str(wav), "-o", str(directory / "song.flac")], check=True)
    return {"mp3": directory / "song.mp3", "wav": wav, "flac": directory / "song.flac"}


def _rate(call: Callable[[], object]) -> float:
    """Return calls per second, run for about BUDGET_SECONDS."""
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < BUDGET_SECONDS:
        call()
        count += 1
    return count / elapsed


def _ffprobe(path: Path) -> None:
    subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=sample_rate,channels", str(path)],
        check=True,
        capture_output=True,
    )


def _bytes_read(call: Callable[[io.FileIO], object], path: Path) -> int:
    with _CountingFile(path) as handle:
        call(handle)
        return handle.bytes_read


def _peak(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _large_wav(path: Path) -> Path:
    """Write a 500 MB WAV of silence as a sparse file (the validator must not care)."""
    data_size = LARGE_WAV_BYTES - 44
    fmt = struct.pack("<HHIIHH", 1, 2, 44100, 176400, 4, 16)
    header = b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    with path.open("wb") as handle:
        handle.write(header + b"data" + struct.pack("<I", data_size))
        handle.truncate(LARGE_WAV_BYTES)
    return path


def _hostile_files(directory: Path, song: dict[str, Path]) -> dict[str, Path]:
    """Write the crafted files at the sizes issue 14 observed, and 10 MB real files."""
    from tests.fixtures.audio import chained_id3, fake_flac_tail, flac_max_framesize, tiny_flac  # noqa: PLC0415

    files: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        files[name] = directory / f"hostile-{len(files)}.bin"
        files[name].write_bytes(data)

    flac, mp3 = song["flac"].read_bytes(), song["mp3"].read_bytes()
    write(
        "FLAC, max_framesize 16 MB, 16 MB tail of fake frame headers",
        flac_max_framesize(flac, 0xFFFFFF) + fake_flac_tail(16 << 20),
    )
    write("3 million chained ID3 tags (33 MB) before an MP3", chained_id3(3_000_000) + mp3)
    tiny = b"\xff\xf3\x14\xc0" + bytes(20)  # MPEG-2 Layer III, 8 kb/s, 24 kHz, mono: the smallest frame, 24 bytes
    write("10 MB of 24-byte MP3 frames (the most frames per byte)", tiny * ((10 << 20) // len(tiny)))
    silent = b"\xff\xfb\x90\xc4" + bytes(413)  # MPEG-1, 128 kb/s, 44.1 kHz, mono, silent: valid, 10 MB, 11 min
    write("10 MB of valid silent 128 kb/s MP3 frames", silent * ((10 << 20) // len(silent)))
    write("900 s of 24-byte MP3 frames (0.9 MB: the most frames a file may hold)", tiny * 37_500)
    repeats = (10 << 20) // len(mp3) + 1
    write("a real FLAC with a 10 MB tail of fake frame headers", flac + fake_flac_tail(10 << 20))
    write(f"{repeats} real VBR MP3s concatenated (about 10 MB)", mp3 * repeats)
    tiny = tiny_flac((10 << 20) // 17)  # frames of 16 samples: 15-19 bytes, the most FLAC frames per byte
    write("10 MB of tiny FLAC frames (16 samples, constant subframes, ~17 bytes each)", tiny)
    claims = tiny[:8] + b"\x00\x10\xff\xff" + tiny[12:]  # the same, STREAMINFO claiming 65,535-sample blocks
    write("the same, STREAMINFO max_blocksize 65,535 (a 278 KB bound per frame)", claims)
    write(f"the real {SECONDS // 60}-minute FLAC (every frame walked)", flac)
    return files


def _seconds_per_10mb(call: Callable[[], object], size: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * (10 << 20) / size


def _quiet(path: Path) -> str:
    try:
        validate_audio_file(path, max_size_mb=100)
    except ValidationError as exc:
        return f"refused: {exc.message[:70]}"
    return "accepted"


def main() -> str:
    """Run the validation measurements and return a Markdown report."""
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        files = _make_corpus(directory)
        has_ffprobe = shutil.which("ffprobe") is not None
        rows = [
            f"| {SECONDS // 60}-minute file (best of {ROUNDS} interleaved rounds) | size | ours /s | mutagen class /s "
            "| ours / mutagen | ffprobe /s | ours / ffprobe | bytes read: ours | bytes read: mutagen |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for fmt, path in files.items():
            parse = MUTAGEN[fmt]
            contenders: dict[str, Callable[[], object]] = {
                "ours": lambda path=path: validate_audio_file(path),  # type: ignore[misc]  # default binds the loop value
                "mutagen": lambda path=path, parse=parse: parse(path),  # type: ignore[misc]  # same
            }
            if has_ffprobe:
                contenders["ffprobe"] = lambda path=path: _ffprobe(path)  # type: ignore[misc]  # same
            best = dict.fromkeys(contenders, 0.0)
            for _ in range(ROUNDS):
                for name, call in contenders.items():
                    best[name] = max(best[name], _rate(call))
            ours_bytes = _bytes_read(validate_audio_file, path)
            mutagen_bytes = _bytes_read(parse, path)
            probe = best.get("ffprobe", 0.0)
            probe_cells = f"{probe:,.0f} | {best['ours'] / probe:,.0f}" if probe else "n/a | n/a"
            rows.append(
                f"| {fmt.upper()} | {path.stat().st_size / 1e6:.1f} MB | {best['ours']:,.0f} | {best['mutagen']:,.0f} "
                f"| {best['ours'] / best['mutagen']:.2f} | {probe_cells} | {ours_bytes:,} | {mutagen_bytes:,} |"
            )
        large = _large_wav(directory / "large.wav")
        ours_peak = _peak(lambda: validate_audio_file(large, max_size_mb=600, max_duration_seconds=10_000))
        mutagen_peak = _peak(lambda: MUTAGEN["wav"](large))
        ours_read = _bytes_read(
            lambda handle: validate_audio_file(handle, max_size_mb=600, max_duration_seconds=10_000), large
        )
        rows += [
            "",
            "| 500 MB WAV | peak Python memory (tracemalloc) | bytes read |",
            "|---|---:|---:|",
            f"| ours | {ours_peak / 1024:,.0f} KiB | {ours_read:,} |",
            f"| mutagen `WAVE` (no checks) | {mutagen_peak / 1024:,.0f} KiB | {_bytes_read(MUTAGEN['wav'], large):,} |",
            "",
            f"| crafted file (best of {ROUNDS}) | size | verdict | validation s per 10 MB | one plain read s per 10 MB "
            "| bytes read / size |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for name, path in _hostile_files(directory, files).items():
            size = path.stat().st_size
            ours_time = _seconds_per_10mb(lambda path=path: _quiet(path), size)  # type: ignore[misc]  # binds the loop value
            read_time = _seconds_per_10mb(path.read_bytes, size)
            read = _bytes_read(_quiet_handle, path)
            cells = f"{ours_time:.3f} | {read_time:.3f} | {read / size:.3f}"
            rows.append(f"| {name} | {size / 1e6:.1f} MB | {_quiet(path)} | {cells} |")
    return "\n".join(rows)


def _quiet_handle(handle: io.FileIO) -> None:
    try:
        validate_audio_file(handle, max_size_mb=100)
    except ValidationError:
        return


if __name__ == "__main__":
    print(main())
