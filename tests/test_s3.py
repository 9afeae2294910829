"""Loading straight from an object store, on a real S3 API (moto's server, tests/s3server.py):
the star loaded from a bucket equals the star loaded from the same files on disk, row for row;
re-runs, overwritten, deleted and compressed objects behave as files do; a missing bucket, bad
credentials and a server that stops mid-load end with one line and exit 3, and the next run
completes the load."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import builders
import pytest
import s3fs
from builders import SMALL_BATCHES, Watcher, expect, one_error_line
from conftest import PROJECT, SAMPLE, counts, query, run_script, schema_objects, table_contents
from s3server import SECRET_KEY, S3Server
from summary import CHECKS_PASSED, parse_summary

import extract
from cli import EXIT_ENVIRONMENT
from contract import Limits

pytestmark = pytest.mark.slow  # make check leaves it out; make test runs it

BUCKET = "sparkify-raw"


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A generated set of 20 daily logs (about 0.4 MB each) and 100 songs."""
    from tools import generate_data

    root = tmp_path_factory.mktemp("generated") / "data"
    generate_data.generate(out=str(root), songs=100, events=24_000, seed=18, days=20)
    return root


def etl(data, *extra: str, **options) -> subprocess.CompletedProcess:
    """builders.etl in a process of its own, as a user runs it: fsspec keeps the file systems it
    makes, with the credentials they read, for the life of a process."""
    return builders.etl(data, *extra, process=True, **options)


def fresh_load(data, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    run_script("create_tables.py")
    return etl(data, *extra, env=env)


def manifest_by_path() -> dict[str, tuple]:
    return {
        path: rest
        for path, *rest in query(
            "SELECT path, size_bytes, sha256, records, loaded, skipped, duplicates, rejected "
            "FROM load_manifest"
        )
    }


def test_the_sample_from_a_bucket_loads_as_from_disk_and_a_rerun_loads_nothing(s3):
    fresh_load(SAMPLE)
    on_disk, disk_manifest = table_contents(), manifest_by_path()

    url = s3.upload(SAMPLE, BUCKET, "udacity")
    first = parse_summary(fresh_load(url, env=s3.env).stdout)
    assert table_contents() == on_disk
    assert first.checks == CHECKS_PASSED
    # The manifest names each object by its full URL, with the size and SHA-256 of its bytes.
    assert manifest_by_path() == {f"{url}/{path}": row for path, row in disk_manifest.items()}
    assert query("SELECT count(*) FROM load_manifest WHERE etag IS NULL OR mtime_ns <> 0") == [(0,)]
    assert query("SELECT DISTINCT data_dir FROM load_runs") == [(url,)]

    again = parse_summary(etl(url, env=s3.env).stdout)
    assert again.nothing_new
    assert again.files == {kind: {"unchanged": n} for kind, n in files_per_kind(SAMPLE).items()}
    assert table_contents() == on_disk


def files_per_kind(folder: Path) -> dict[str, int]:
    return {
        kind: sum(1 for _ in (folder / f"{kind}_data").rglob("*.json")) for kind in ("song", "log")
    }


def test_compressed_objects_load_like_their_plain_twins(s3, generated, tmp_path):
    """Each object gzip, bzip2, xz, zstd or zip data, in turn."""
    fresh_load(generated)
    plain = table_contents()

    compressed = tmp_path / "compressed"
    suffixes = itertools.cycle(builders.COMPRESS)
    for path, suffix in zip(sorted(generated.rglob("*.json")), suffixes):
        content = builders.COMPRESS[suffix](path.read_bytes())
        builders.write(compressed, f"{path.relative_to(generated)}{suffix}", content)
    url = s3.upload(compressed, BUCKET, "compressed")
    summary = parse_summary(fresh_load(url, env=s3.env).stdout)
    assert table_contents() == plain
    assert summary.files == {kind: {"new": n} for kind, n in files_per_kind(generated).items()}
    assert {path.rsplit(".", 1)[1] for (path,) in query("SELECT path FROM load_manifest")} == {
        "gz",
        "bz2",
        "xz",
        "zst",
        "zip",
    }


def test_hidden_objects_are_named_as_ignored_and_never_read(s3, tmp_path):
    data = builders.base_sample(tmp_path / "data")
    for path, content in builders.HIDDEN.items():
        builders.write(data, path, content)
    url = s3.upload(data, BUCKET, "hidden")
    summary = parse_summary(fresh_load(url, env=s3.env).stdout)
    assert (summary.ignored, summary.ignored_examples) == (
        3,
        [
            f"{url}/song_data/A/._TRAAABASE000000001.json (hidden: not read)",
            f"{url}/log_data/.Trashes/501/deleted.json (hidden: not read)",
            f"{url}/log_data/2018/.partial.json (hidden: not read)",
        ],
    )
    assert summary.rejected is None
    assert counts() == builders.BASE


def test_keys_the_store_library_would_read_as_another_object_are_named_as_ignored(s3, tmp_path):
    """s3fs reads a key's ?versionId=... as a version of the object the key's start names, and a
    key ending in / as a folder: either would load another object's bytes, or none."""
    data = builders.base_sample(tmp_path / "data")
    url = s3.upload(data, BUCKET, "odd-keys")
    other_day = (data / "log_data/2018/11" / builders.BASE_LOGS[1]).read_bytes()
    odd = ["2018-11-01-events.json?versionId=resent.json", "kept-as-a-folder/", "./a.json"]
    for key in odd:
        s3.client().put_object(
            Bucket=BUCKET, Key=f"odd-keys/log_data/2018/11/{key}", Body=other_day
        )
    summary = parse_summary(fresh_load(url, env=s3.env).stdout)
    assert (summary.ignored, summary.ignored_examples) == (
        3,
        [
            f"{url}/log_data/2018/11/{odd[2]} (a key holding a folder named . or .., which a "
            "path reads as another: not read)",
            f"{url}/log_data/2018/11/{odd[0]} (a key holding ?versionId=, which the store library "
            "reads as a version: not read)",
            f"{url}/log_data/2018/11/{odd[1]} (a key ending in /, which stores read as a folder: "
            "not read)",
        ],
    )
    assert summary.rejected is None
    assert counts() == builders.BASE


def test_song_files_rejects_come_first_in_the_summary_as_from_disk(s3, tmp_path):
    """The summary shows song files' rejects first, as they load, then the logs': in a store,
    the paths are URLs, where the logs' sort first."""
    data = builders.base_sample(tmp_path / "data")
    builders.write(data, "song_data/Z/bad.json", builders.line(builders.song(1, duration="x")))
    no_ts = [{**builders.event(n), "ts": None} for n in range(6)]
    builders.write(data, "log_data/2018/11/bad.json", builders.log_file(*no_ts))
    url = s3.upload(data, BUCKET, "song-first")
    from_disk = parse_summary(fresh_load(data).stdout)
    from_bucket = parse_summary(fresh_load(url, env=s3.env).stdout)
    on_disk = [example.removeprefix(f"{data}/") for example in from_disk.examples]
    assert from_bucket.examples == [f"{url}/{example}" for example in on_disk]
    assert from_bucket.examples[:2] == [
        f"{url}/song_data/Z/bad.json:1: duration is not a number",
        f"{url}/log_data/2018/11/bad.json:1: ts missing",
    ]


def test_an_archived_object_is_that_objects_reject_and_loads_once_restored(s3, tmp_path):
    """An object a lifecycle rule moved to Glacier cannot be read until restored: the rest
    loads (a full refresh too), and a run after the restore loads it."""
    data = builders.base_sample(tmp_path / "data")
    url = s3.upload(data, BUCKET, "archived")
    key = f"archived/log_data/2018/11/{builders.BASE_LOGS[1]}"
    source = {"Bucket": BUCKET, "Key": key}
    s3.client().copy_object(**source, CopySource=source, StorageClass="GLACIER")

    for extra in ([], ["--full-refresh"]):
        summary = parse_summary(fresh_load(url, *extra, env=s3.env).stdout)
        assert summary.examples == [
            f"{url}/log_data/2018/11/{builders.BASE_LOGS[1]}:-: cannot read file: The operation is "
            "not valid for the object's storage class (GLACIER: restore it to load it)"
        ]
        assert counts()["songplays"] == 11

    s3.client().restore_object(**source, RestoreRequest={"Days": 1})
    summary = parse_summary(etl(url, env=s3.env).stdout)
    assert summary.files["log"] == {"unchanged": 1, "new": 1}
    assert counts() == builders.BASE


def test_overwritten_and_deleted_objects_load_as_changed_and_deleted_files_do(
    s3, generated, tmp_path
):
    """The same changes made to a folder and to a bucket loaded before: an overwritten log,
    a deleted log and a deleted song. Both runs reload the one and keep what the others loaded,
    and both summaries say which are gone."""
    folder = tmp_path / "data"
    shutil.copytree(generated, folder)
    url = s3.upload(folder, BUCKET, "changing")
    logs = sorted((folder / "log_data").rglob("*.json"))
    songs = sorted((folder / "song_data").rglob("*.json"))
    overwritten, deleted = logs[3], [logs[7], songs[5]]

    def change() -> None:
        """Half of the overwritten log's events, and the deleted files gone, on disk."""
        lines = overwritten.read_bytes().splitlines(keepends=True)
        overwritten.write_bytes(b"".join(lines[: len(lines) // 2]))
        for path in deleted:
            path.unlink()

    def bucket_key(path: Path) -> str:
        return f"changing/{path.relative_to(folder).as_posix()}"

    fresh_load(url, env=s3.env)
    change()
    s3.client().put_object(
        Bucket=BUCKET, Key=bucket_key(overwritten), Body=overwritten.read_bytes()
    )
    for path in deleted:
        s3.client().delete_object(Bucket=BUCKET, Key=bucket_key(path))
    from_bucket = parse_summary(etl(url, env=s3.env).stdout)
    bucket_tables = table_contents()

    shutil.rmtree(folder)
    shutil.copytree(generated, folder)
    fresh_load(folder)
    change()
    from_disk = parse_summary(etl(folder).stdout)

    assert bucket_tables == table_contents()
    logs_now, songs_now = len(logs) - 1, len(songs) - 1
    for summary in (from_bucket, from_disk):
        assert summary.files == {
            "song": {"unchanged": songs_now},
            "log": {"unchanged": logs_now - 1, "changed": 1},
        }
        assert summary.gone == 2
        assert summary.checks == CHECKS_PASSED
    gone = [p.relative_to(folder).as_posix() for p in deleted]
    assert sorted(from_bucket.gone_examples) == sorted(f"{url}/{path}" for path in gone)
    assert sorted(from_disk.gone_examples) == sorted(gone)


def test_keys_starting_with_a_slash_load_under_their_prefix_as_any_keys_do(s3):
    """`aws s3 cp f s3://bucket//feed/f` writes the key /feed/f: read from s3://bucket//feed (a
    listing of bucket//feed through fsspec would drop the "/"), not from s3://bucket/feed."""
    fresh_load(SAMPLE)
    on_disk = table_contents()
    url = s3.upload(SAMPLE, "slashed", "/feed")
    assert url == "s3://slashed//feed"

    assert parse_summary(fresh_load(url, env=s3.env).stdout).checks == CHECKS_PASSED
    assert table_contents() == on_disk
    assert parse_summary(etl(url, env=s3.env).stdout).nothing_new
    done = etl("s3://slashed/feed", exit_code=EXIT_ENVIRONMENT, env=s3.env)
    assert one_error_line(done).startswith("error: no data files under s3://slashed/feed: ")


def test_a_missing_bucket_or_prefix_is_one_line_naming_the_url_and_no_secret(s3):
    s3.upload(SAMPLE, BUCKET, "udacity")
    run_script("create_tables.py")
    for url, reason in [
        ("s3://no-such-bucket/udacity", "cannot list s3://no-such-bucket/udacity/song_data: "),
        (f"s3://{BUCKET}/no-such-prefix", f"no data files under s3://{BUCKET}/no-such-prefix: "),
    ]:
        done = etl(url, exit_code=EXIT_ENVIRONMENT, env=s3.env)
        assert one_error_line(done).startswith(f"error: {reason}")
        assert SECRET_KEY not in done.stdout + done.stderr
    assert query("SELECT count(*) FROM load_runs") == [(0,)]


def test_a_secret_that_the_buckets_name_holds_leaves_the_url_whole(s3):
    """A plain word as the secret, as local stores' defaults are (moto's "testing", MinIO's
    "minioadmin"): in the URL the user gave, *** would hide nothing but tell the secret."""
    run_script("create_tables.py")
    env = {**s3.env, "AWS_SECRET_ACCESS_KEY": "minioadmin"}
    for given in ("s3://minioadmin-gone/feed/", "S3://minioadmin-gone/feed"):
        done = etl(given, exit_code=EXIT_ENVIRONMENT, env=env)
        assert one_error_line(done).startswith(
            "error: cannot list s3://minioadmin-gone/feed/song_data: "
        )


@pytest.mark.parametrize("url", ["s3://", "s3:///udacity", "S3://"])
def test_a_url_naming_no_bucket_says_so_in_one_line(url):
    done = etl(url, exit_code=EXIT_ENVIRONMENT)
    scheme = url[:2].lower()
    assert (
        one_error_line(done) == f"error: {url}: the URL names no bucket ({scheme}://bucket/prefix)"
    )


def test_a_store_error_reads_as_the_store_says_it_without_pythons_errno():
    """s3fs makes an OSError of what S3 says: an "[Errno 22]" before it says nothing more."""
    said = "The provided token is malformed or otherwise invalid."
    assert extract.store_reason(OSError(22, said)) == said

    class Unreachable(OSError):  # as aiohttp's connection errors say theirs: the host first
        def __str__(self):
            return "Cannot connect to host minio.local:9000 ssl:None [Name or service not known]"

    assert extract.store_reason(Unreachable(-2, "Name or service not known")) == (
        "Cannot connect to host minio.local:9000 ssl:None [Name or service not known]"
    )
    assert extract.store_reason(ValueError("Parameter validation failed:\nInvalid bucket")) == (
        "Parameter validation failed: Invalid bucket"
    )


def test_a_bucket_name_the_store_refuses_is_named_with_the_stores_reason(s3):
    done = etl("s3://bad_bucket!/x", exit_code=EXIT_ENVIRONMENT, env=s3.env)
    assert one_error_line(done).startswith(
        "error: cannot list s3://bad_bucket!/x/song_data: Parameter validation failed: "
        'Invalid bucket name "bad_bucket!"'
    )


def test_a_url_scheme_in_capitals_reads_the_same_objects(s3):
    fresh_load(SAMPLE)
    on_disk = table_contents()
    url = s3.upload(SAMPLE, BUCKET, "capitals")

    summary = parse_summary(fresh_load(url.replace("s3://", "S3://"), env=s3.env).stdout)

    assert table_contents() == on_disk
    assert summary.checks == CHECKS_PASSED
    assert query("SELECT count(*) FROM load_manifest WHERE path NOT LIKE %s", (f"{url}/%",)) == [
        (0,)
    ]


def replaced_after_listing(s3, monkeypatch, old: bytes, new: bytes):
    """One log object listed and planned as old, sent again as new, then read: the task, what
    the read says of it, its bytes, and the ETag the store gives new."""
    key = "replaced/log_data/day.json"
    s3.with_bucket(BUCKET).put_object(Bucket=BUCKET, Key=key, Body=old)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # one made for another server's environment
    source = extract.source(f"s3://{BUCKET}/replaced")
    (batch,) = extract.plan(source, extract.listing(source, "log"), "log", {}, Limits()).batches

    s3.client().put_object(Bucket=BUCKET, Key=key, Body=new)
    ((task, read, contents),) = extract.read_batch(batch, Limits().log_batch_bytes)
    s3fs.S3FileSystem.clear_instance_cache()
    return task, read, b"".join(contents), s3.client().head_object(Bucket=BUCKET, Key=key)["ETag"]


def test_an_object_replaced_by_a_bigger_one_after_the_listing_is_read_whole(s3, monkeypatch):
    """A store replaces an object whole (it never grows): one sent again, bigger, between the
    run's listing and its reading is read as it is now, not cut at the size listed."""
    old = builders.log_file(*[builders.event(n) for n in range(3)])
    new = builders.log_file(*[builders.event(n) for n in range(40)])
    task, read, content, etag = replaced_after_listing(s3, monkeypatch, old, new)
    assert (task.size, read.status, read.size, content, read.etag) == (
        len(old),
        "new",
        len(new),
        new,
        etag,
    )


def test_an_object_replaced_by_one_of_the_same_size_after_the_listing_keeps_the_etag_it_read(
    s3, monkeypatch
):
    """Listed as one version and read as another of the same size (a correction of a level,
    say): the manifest gets the ETag of the bytes it hashed, not the one listed. With the
    listed one, the first version put back would look unchanged at every later run, its
    correction's rows kept."""
    old = builders.log_file(*[builders.event(n, level="free") for n in range(3)])
    new = builders.log_file(*[builders.event(n, level="paid") for n in range(3)])
    task, read, content, etag = replaced_after_listing(s3, monkeypatch, old, new)
    assert (read.status, content, read.etag) == ("new", new, etag)
    assert task.etag != etag


def test_a_store_asking_to_slow_down_is_named_so_not_as_an_object_replaced():
    """s3fs gives S3's SlowDown (and 503, 409) the errno of an object replaced while read,
    EBUSY: the run's last line gives the store's words."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    slow_down = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
    error = translate_boto_error(ClientError(slow_down, "GetObject"))
    assert error.errno == errno.EBUSY
    url = f"s3://{BUCKET}/log_data/day.json"
    assert str(extract.store_failure(error, url)) == (
        f"cannot read {url}: Please reduce your request rate."
    )


def test_an_object_emptied_after_the_listing_is_read_as_empty_not_a_failed_run(s3, monkeypatch):
    """Replaced by an empty object between the listing and the reading: read as it is then,
    empty (a range of bytes the store cannot give for an empty object stops nothing), with the
    empty version's ETag."""
    old = builders.log_file(*[builders.event(n) for n in range(3)])
    task, read, content, etag = replaced_after_listing(s3, monkeypatch, old, b"")
    assert (read.status, read.size, content, read.etag) == ("new", 0, b"", etag)


@pytest.mark.parametrize("part_bytes", [Limits().log_batch_bytes, 64], ids=["fetched", "streamed"])
def test_an_object_deleted_after_the_listing_is_its_reject_with_the_stores_reason(
    s3, monkeypatch, part_bytes
):
    """Fetched whole or, bigger than a part, streamed: an object deleted between the listing
    and its reading is that object's reject, with S3's reason, never its own key for one."""
    key = "deleted/log_data/day.json"
    s3.with_bucket(BUCKET).put_object(
        Bucket=BUCKET, Key=key, Body=builders.log_file(*[builders.event(n) for n in range(3)])
    )
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    source = extract.source(f"s3://{BUCKET}/deleted")
    (batch,) = extract.plan(source, extract.listing(source, "log"), "log", {}, Limits()).batches

    s3.client().delete_object(Bucket=BUCKET, Key=key)
    ((_, read, _),) = extract.read_batch(batch, part_bytes)
    s3fs.S3FileSystem.clear_instance_cache()

    assert (read.status, read.error) == (
        "unreadable",
        "cannot read file: The specified key does not exist.",
    )


def test_an_object_replaced_while_it_is_streamed_is_named_as_replaced_not_as_gone(
    s3, monkeypatch, tmp_path
):
    # Read in blocks, a big object sent again meanwhile is refused by its ETag: the store's
    # words ("... no longer exists") would send a user looking for a deleted object.
    builders.write(tmp_path, "log_data/day.json", b"x" * (3 * extract.OBJECT_BLOCK))
    s3.upload(tmp_path, BUCKET, "moving")
    key = "moving/log_data/day.json"
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{BUCKET}/{key}"
    stream = extract.ObjectStream(extract.Store("s3"), url)
    stream.read(1024)  # its first block fetched
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"y" * (3 * extract.OBJECT_BLOCK))

    with pytest.raises(extract.StoreError) as refused:
        stream.read(2 * extract.OBJECT_BLOCK)

    assert str(refused.value) == (
        f"cannot read {url}: it was replaced while it was read (its ETag changed); "
        "run again to read it as it is now"
    )
    stream.close()
    s3fs.S3FileSystem.clear_instance_cache()


def test_bad_credentials_are_one_line_and_no_secret():
    """A server that checks credentials, which knows none: every request is refused as a real
    store refuses a wrong key."""
    strict = S3Server(enforce_auth=True).start()
    try:
        run_script("create_tables.py")
        done = etl(f"s3://{BUCKET}/udacity", exit_code=EXIT_ENVIRONMENT, env=strict.env)
    finally:
        strict.stop()
    assert one_error_line(done) == (
        f"error: cannot list s3://{BUCKET}/udacity/song_data: "
        "The AWS Access Key Id you provided does not exist in our records."
    )
    assert SECRET_KEY not in done.stdout + done.stderr


def test_public_objects_are_read_anonymously_and_private_ones_refused(s3):
    fresh_load(SAMPLE)
    on_disk = table_contents()
    # No credentials: only where the server is.
    env = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}

    url = s3.upload(SAMPLE, BUCKET, "private")
    run_script("create_tables.py")
    refused = one_error_line(etl(url, "--anonymous", exit_code=EXIT_ENVIRONMENT, env=env))
    assert refused.startswith(f"error: cannot read {url}/song_data/")
    assert refused.endswith(".json: Forbidden")
    assert query("SELECT count(*) FROM load_manifest") == [(0,)]

    url = s3.upload(SAMPLE, BUCKET, "public", acl="public-read")
    parse_summary(etl(url, "--anonymous", env=env).stdout)
    assert table_contents() == on_disk


def test_a_server_stopped_mid_load_leaves_whole_batches_and_the_next_run_completes(s3, generated):
    """A first load, so a bulk load: the keys it dropped are built back before it stops."""
    fresh_load(generated)
    uninterrupted = table_contents()
    keys = schema_objects()

    url = s3.upload(generated, BUCKET, "dropped")
    run_script("create_tables.py")
    load = subprocess.Popen(
        [sys.executable, "etl.py", *SMALL_BATCHES, "--data", url, "--no-progress"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **s3.env},
    )
    watcher = Watcher()
    try:
        watcher.wait("SELECT count(*) FROM load_manifest WHERE kind = 'log'", lambda n: n > 0, load)
        s3.stop()
        out, err = load.communicate(timeout=120)
        committed = watcher.value("SELECT count(*) FROM load_manifest WHERE kind = 'log'")
    finally:
        watcher.close()
        if s3.process is None:
            s3.start()
    done = subprocess.CompletedProcess(load.args, load.returncode, out, err)
    expect(done, EXIT_ENVIRONMENT)
    assert one_error_line(done).startswith(f"error: cannot read {url}/log_data/")
    assert SECRET_KEY not in out + err
    assert 0 < committed < files_per_kind(generated)["log"]
    assert schema_objects() == keys
    # What was committed is whole: each file's plays are all in, or none are.
    assert query(
        "SELECT count(*) FROM load_manifest m WHERE kind = 'log' AND m.loaded <> "
        "(SELECT count(*) FROM songplays p WHERE p.file_id = m.file_id)"
    ) == [(0,)]

    s3.upload(generated, BUCKET, "dropped")  # the restarted server starts empty
    resumed = parse_summary(etl(url, env=s3.env).stdout)
    assert resumed.files["log"] == {
        "unchanged": committed,
        "new": files_per_kind(generated)["log"] - committed,
    }
    assert resumed.checks == CHECKS_PASSED
    assert table_contents() == uninterrupted
