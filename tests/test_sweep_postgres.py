"""sweep.py on PostgreSQL, the many-machine path: a throwaway server, two workers on one study.

The server is PostgreSQL's own ``initdb`` and ``pg_ctl`` (from PATH or /usr/lib/postgresql/<version>/bin, where
Debian's ``postgresql`` package puts them; .ci/run installs it) in a fresh temp dir, listening on 127.0.0.1 only,
on a free port, trust authentication, fsync off. PostgreSQL refuses to run as root, so as root (CI) it runs as the
unprivileged user ``nobody`` (``runuser -u nobody --``) in a directory under /tmp given to that user. The
finalizer stops it (``pg_ctl stop -m immediate``) and deletes the directory. Without the binaries the test skips
with the reason, except where the environment variable CI is set: there it fails, so CI never skips it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_sweep import REPO, fake_env, fake_sweep, starts

from maskcls.sweep import queue

SERVER_USER = "nobody"  # as root: PostgreSQL's initdb and postgres refuse to run as root
TIMEOUT_S = 120  # every server command is bounded: a hung start fails the test, it never hangs the suite
pytestmark = pytest.mark.slow  # a PostgreSQL server of its own and sweeps of real processes (make test-fast skips)


def pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: PATH first, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).parent)):
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def server_cmd(cmd: list[str], what: str, log: Path | None = None) -> None:
    out = subprocess.run(as_server_user(cmd), capture_output=True, text=True, timeout=TIMEOUT_S)
    if out.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.is_file() else ""
        pytest.fail(f"{what} failed ({out.returncode}): {out.stdout}{out.stderr}{tail}")


@pytest.fixture(scope="module")
def new_database(request):
    """``new_database(name)`` creates a database on a server of the module's own (stopped at the end) and gives
    its URL, ``postgresql://postgres@127.0.0.1:PORT/NAME``: the README's form, psycopg 3 through driver_url."""
    bin_dir = pg_bin()
    if bin_dir is None:
        reason = "PostgreSQL's initdb/pg_ctl not found (PATH, /usr/lib/postgresql/*/bin): apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: this test must run, see .ci/run)")
        pytest.skip(reason)
    root = os.geteuid() == 0
    # As root, under /tmp: the unprivileged server user must reach the folder (pytest's tmp_path is root-only).
    home = Path(tempfile.mkdtemp(prefix="maskcls-pg-", dir="/tmp" if root else None))
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    if root:
        shutil.chown(home, SERVER_USER)
    data, log, port = home / "data", home / "server.log", free_port()
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8"]
    server_cmd([*initdb, "--no-sync"], "initdb")
    pg_ctl = str(bin_dir / "pg_ctl")
    # TCP on 127.0.0.1 only; the socket file in home (pg_ctl hands -o to a shell: quoted)
    options = f"-h 127.0.0.1 -p {port} -k {shlex.quote(str(home))} -c fsync=off"
    request.addfinalizer(
        lambda: subprocess.run(
            as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop"]),
            capture_output=True,
            timeout=TIMEOUT_S,
        )
    )
    server_cmd([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"], "pg_ctl start", log)

    def create(name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=10) as db:
            db.autocommit = True  # CREATE DATABASE cannot run in a transaction
            db.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    return create


def test_postgresql_urls_use_psycopg_3():
    assert queue.driver_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert queue.driver_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert queue.driver_url("sqlite:///x/sweep.db") == "sqlite:///x/sweep.db"


def test_claims_are_atomic_on_postgres_under_contention(tmp_path, new_database):
    sys.path.insert(0, str(REPO / "bench"))
    import sweep_checks  # three processes race to pop the same WAITING trials (bench/sweep_checks.py)

    result = sweep_checks.claims(tmp_path, "sweep", trials=60, url=new_database("claims"))
    assert result["twice"] == 0 and sum(result["per_process"]) == 60  # none twice, none left behind


def test_two_workers_on_postgres_train_every_run_once(tmp_path, new_database):
    """Both workers plan the same sweep at once (one creates it, the other joins) and share its 6 runs."""
    cmd = fake_sweep(tmp_path, "--repeats", "1", "--storage", new_database("sweeps"))
    # Each run takes a second, so the first worker cannot finish the plan before the second one is up.
    env = fake_env(tmp_path, FAKE_TRAIN_SLEEP="1", FAKE_TRAIN_ACC=json.dumps({"--lr 1e-2": 0.95}))
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in "ab"]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = starts(tmp_path)
    names = [r["name"] for r in runs]
    assert len(names) == len(set(names)) == 6, names  # 3 variants x 2 folds x 1 seed, each trained once
    by_worker = {pid: sum(r["ppid"] == pid for r in runs) for pid in (p.pid for p in procs)}
    assert all(n > 0 for n in by_worker.values()) and sum(by_worker.values()) == 6, by_worker
    sweep_dir = tmp_path / "runs" / "s"
    assert not list(sweep_dir.glob("*_2")) and len(list(sweep_dir.glob("*_f*_s*"))) == 6
    assert "| lr-1e-2 " in (sweep_dir / "verdict.md").read_text()
    assert "postgresql://postgres@127.0.0.1" in json.loads((sweep_dir / "sweep.json").read_text())["storage"]
