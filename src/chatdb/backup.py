"""`chatdb backup` and `chatdb restore`: pg_dump and pg_restore in custom format.

The tools must be at least as new as the server, and pg_restore as new as the
pg_dump that wrote the file, so chatdb picks them by major version: the
embedded server's own (pgserver ships them), then Debian's
/usr/lib/postgresql/<major>/bin, then PATH; the server's own major first,
else the newest newer one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from chatdb.errors import ChatdbError, Invalid

# A custom-format archive starts with these bytes.
ARCHIVE_MAGIC = b"PGDMP"
TOOL_TIMEOUT_SECONDS = 6 * 3600


@dataclass(frozen=True, slots=True)
class Tool:
    path: Path
    major: int


def pgserver_bin() -> Path | None:
    """Where the embedded server's binaries are, if pgserver is installed."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; irrelevant here.
        warnings.simplefilter("ignore", UserWarning)
        try:
            import pgserver
        except ImportError:  # pragma: no cover - pgserver is a dependency
            return None
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _major(path: Path) -> int | None:
    try:
        out = subprocess.run(  # noqa: S603 - a path chatdb chose, no shell
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(found.group(1)) if found else None


def find_tool(name: str, server_major: int, *, embedded: bool) -> Tool:
    """The `name` binary (pg_dump, pg_restore) to use with a server of `server_major`."""
    candidates: list[Path] = []
    own = pgserver_bin()
    if own is not None:
        candidates.append(own / name)
    candidates += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    tools = []
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            major = _major(path)
            if major is not None:
                tools.append(Tool(path, major))
    if embedded and tools and own is not None and tools[0].path.parent == own:
        return tools[0]
    exact = [t for t in tools if t.major == server_major]
    if exact:
        return exact[0]
    newer = sorted((t for t in tools if t.major > server_major), key=lambda t: t.major)
    if newer:
        return newer[-1]
    found = ", ".join(f"{t.path} ({t.major})" for t in tools) or "none"
    raise ChatdbError(
        f"no {name} for PostgreSQL {server_major} or newer (found: {found}); "
        f"install postgresql-client-{server_major}"
    )


def server_major(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SHOW server_version_num")).scalar_one()) // 10000


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A conninfo without the password, and an environment carrying it, so the
    password never shows on a command line (ps) or in an error message."""
    dbname = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return dbname, env


def _run(tool: Tool, args: list[str], url: URL | None) -> None:
    """Run a tool on the database at `url` (None: on no database)."""
    dbname, env = _libpq(url) if url is not None else ("", dict(os.environ))
    connect = [f"--dbname={dbname}"] if url is not None else []
    try:
        result = subprocess.run(  # noqa: S603 - fixed binaries and arguments, no shell
            [str(tool.path), *connect, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChatdbError(f"{tool.path.name} did not finish in {TOOL_TIMEOUT_SECONDS} s") from exc
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "error" in line.lower()), lines[0] if lines else ""
        )
        raise ChatdbError(f"{tool.path.name} failed: {reason.strip() or result.returncode}")


def backup(engine: Engine, url: URL, file: Path, *, embedded: bool, overwrite: bool) -> Tool:
    """Dump the whole database to `file` (custom format). Written beside it
    first and renamed at the end, so a failed dump never leaves a partial file
    under the name."""
    file = file.expanduser()
    if file.is_dir():
        raise Invalid(f"{file} is a directory; give a file name")
    if not file.parent.is_dir():
        raise Invalid(f"cannot write {file}: directory {file.parent} does not exist")
    if not os.access(file.parent, os.W_OK):
        raise Invalid(f"cannot write {file}: directory {file.parent} is not writable")
    if file.exists() and not overwrite:
        raise Invalid(f"{file} exists; pass --force to replace it")
    tool = find_tool("pg_dump", server_major(engine), embedded=embedded)
    partial = file.with_name(f".{file.name}.partial")
    try:
        _run(tool, ["--format=custom", f"--file={partial}"], url)
        os.replace(partial, file)
    finally:
        partial.unlink(missing_ok=True)
    return tool


def check_archive(file: Path) -> Path:
    """`file` as a readable custom-format archive, or a one-line Invalid."""
    file = file.expanduser()
    if not file.exists():
        raise Invalid(f"{file} does not exist")
    if not file.is_file():
        raise Invalid(f"{file} is not a file")
    try:
        with file.open("rb") as handle:
            head = handle.read(len(ARCHIVE_MAGIC))
    except OSError as exc:
        raise Invalid(f"cannot read {file}: {exc.strerror}") from exc
    if head != ARCHIVE_MAGIC:
        raise Invalid(f"{file} is not a chatdb backup (a pg_dump custom-format archive)")
    return file


def restore(engine: Engine, url: URL, file: Path, *, embedded: bool) -> Tool:
    """Replace the database's contents with the archive's, in one transaction:
    if anything fails, the database is left as it was."""
    file = check_archive(file)
    tool = find_tool("pg_restore", server_major(engine), embedded=embedded)
    try:
        # Reads the whole table of contents: a truncated or damaged file stops here.
        _run(tool, ["--list", "--file=/dev/null", str(file)], None)
    except ChatdbError as exc:
        raise Invalid(f"{file} is not a readable backup: {exc}") from exc
    _restore_through_psql(tool, file, url)
    return tool


# Partitioned tables (messages, with CHATDB_MESSAGE_PARTITIONS) go first, whole:
# pg_restore --clean drops a partition's primary key on its own, which
# PostgreSQL refuses ("cannot drop inherited constraint").
_DROP_PARTITIONED = """
DO $$
DECLARE partitioned regclass;
BEGIN
    FOR partitioned IN
        SELECT oid FROM pg_catalog.pg_class WHERE relkind = 'p' AND NOT relispartition
           AND relnamespace = pg_catalog.current_schema()::regnamespace
    LOOP
        EXECUTE pg_catalog.format('DROP TABLE %s CASCADE', partitioned);
    END LOOP;
END $$"""
# Written after pg_restore's script only if pg_restore succeeded; checked last,
# so a script cut short by a damaged archive rolls back instead of committing.
_MARK_COMPLETE = b"SELECT pg_catalog.set_config('chatdb.restore_complete', 'yes', true);\n"
_CHECK_COMPLETE = """
DO $$
BEGIN
    IF pg_catalog.current_setting('chatdb.restore_complete', true) IS DISTINCT FROM 'yes' THEN
        RAISE EXCEPTION 'the backup could not be read to its end; nothing was restored';
    END IF;
END $$"""


def _restore_through_psql(tool: Tool, file: Path, url: URL) -> None:
    """pg_restore --clean's script, run by psql in one transaction after _DROP_PARTITIONED."""
    psql = tool.path.parent / "psql"
    if not os.access(psql, os.X_OK):
        raise ChatdbError(f"no psql beside {tool.path}; install postgresql-client-{tool.major}")
    dbname, env = _libpq(url)
    # --clean's DROP ... IF EXISTS on an empty database: a NOTICE per object.
    env["PGOPTIONS"] = "-c client_min_messages=warning"
    script = [str(tool.path), "--clean", "--if-exists", "--no-owner", "--no-privileges"]
    run = [str(psql), "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1"]
    run += [f"--dbname={dbname}", f"--command={_DROP_PARTITIONED}", "--file=-"]
    run += [f"--command={_CHECK_COMPLETE}"]
    with (
        subprocess.Popen(  # noqa: S603 - fixed binaries and arguments, no shell
            [*script, "--file=-", str(file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as producer,
        subprocess.Popen(  # noqa: S603
            run,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as consumer,
    ):
        assert producer.stdout is not None
        assert consumer.stdin is not None
        try:
            while chunk := producer.stdout.read(1 << 16):
                consumer.stdin.write(chunk)
            if producer.wait(timeout=TOOL_TIMEOUT_SECONDS) == 0:
                consumer.stdin.write(_MARK_COMPLETE)
            consumer.stdin.close()
        except BrokenPipeError:
            pass  # psql stopped at an error: its message says which
        except subprocess.TimeoutExpired as exc:
            producer.kill()
            consumer.kill()
            raise ChatdbError(f"pg_restore did not finish in {TOOL_TIMEOUT_SECONDS} s") from exc
        producer.kill()  # only if psql stopped reading early; a no-op otherwise
        errors = consumer.stderr.read().decode(errors="replace") if consumer.stderr else ""
        consumer.wait()
        produced = producer.wait()
        produce_errors = producer.stderr.read().decode(errors="replace") if producer.stderr else ""
    if consumer.returncode != 0 or produced != 0:
        lines = [ln for ln in (produce_errors + "\n" + errors).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
        raise ChatdbError(f"restore failed: {reason.strip() or consumer.returncode}")
