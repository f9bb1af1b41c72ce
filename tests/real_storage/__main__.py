"""``python -m tests.real_storage install|run``: build the real Storage server (cached), or run one by hand."""

from __future__ import annotations

import sys
import time

from tests.real_storage import SetupError, install, running_server


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "install"
    try:
        build = install()
        state = "cached build" if build.cached else "built"
        print(f"real-storage: {state} {build.folder} in {build.seconds:.1f} s", file=sys.stderr)
        if command == "run":
            with running_server(build) as server:
                print(f"SUPABASE_URL={server.url}\nSERVICE_KEY={server.service_key}\nANON_KEY={server.anon_key}")
                print(f"real-storage: started in {server.start_seconds:.1f} s; Ctrl-C stops it", file=sys.stderr)
                while True:
                    time.sleep(3600)
    except SetupError as exc:
        print(f"real-storage: {exc}\nSee tests/real_storage/__init__.py for the settings.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
