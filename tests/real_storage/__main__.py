"""``python -m tests.real_storage install|run``: build the real Storage server (cached), or run one by hand."""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

from tests.real_storage import SetupError, install, running_server


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (or SIGINT in a background job) stops the server as Ctrl-C does


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "install"
    signal.signal(signal.SIGTERM, _stop)
    try:
        build = install()
        state = "cached build" if build.cached else "built"
        _say(f"real-storage: {state} {build.folder} in {build.seconds:.1f} s")
        if command == "run":
            with running_server(build) as server:
                sys.stdout.write(
                    f"SUPABASE_URL={server.url}\nSERVICE_KEY={server.service_key}\nANON_KEY={server.anon_key}\n"
                )
                sys.stdout.flush()
                _say(f"real-storage: started in {server.start_seconds:.1f} s; Ctrl-C stops it")
                while True:
                    time.sleep(3600)
    except SetupError as exc:
        _say(f"real-storage: {exc}\nSee tests/real_storage/__init__.py for the settings.")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
