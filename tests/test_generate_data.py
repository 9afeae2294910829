"""Tests for tools/generate_data.py: format fidelity to the Udacity data and a truthful
truth.json."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess

import ftfy
import pandas as pd
import pytest
from conftest import run_script

from tools import generate_data

TOOL = ("-m", "tools.generate_data")  # how a user runs it, from the project folder
SMALL = {"songs": 80, "events": 4000, "seed": 7, "users": 60, "start": "2018-11-26", "days": 10}
EPOCH = dt.date(1970, 1, 1)
# A small set that has every kind of row truth.json describes (a resolved non-ASCII play, a near
# miss, a user whose level changes), spanning a leap day and a month end. Its digests were taken
# from the generator's output; any byte it changes, for this set or any other, fails here.
PINNED = {"songs": 6, "events": 2000, "seed": 1, "users": 5, "start": "2020-02-28", "days": 3}
PINNED_SHA256 = {
    "log_data/2020/02/2020-02-28-events.json": (
        "a1e7119364b69d2ec456972a69f7edeeeac943a568be9762704811b631e4a822"
    ),
    "log_data/2020/02/2020-02-29-events.json": (
        "a44add25e344da1baf81924d4f2dcb9ee3f906dd64efab77901a2f2ea304bc1e"
    ),
    "log_data/2020/03/2020-03-01-events.json": (
        "061ffa1dae39913b98a26f8211bb0f695b1adfda7a621706e73f3e4a6765b385"
    ),
    "song_data/A/A/A/TRAAA187O67DW0K069.json": (
        "859116402a781d915da2844de02a74bf89d8cccb9690bb8a7a7cd57a7601d5f0"
    ),
    "song_data/A/A/A/TRAAA8UG59ZSNMHYPG.json": (
        "52be9fe8756cc9f00523dc94943b345e97ca8c307920ea549426aa69cab14d74"
    ),
    "song_data/A/A/A/TRAAAEFTJLSJMEI72Z.json": (
        "a82911f6718a29452b2c78be1345af4d74e86ce9ae4e4d26d0515b3ba9e0a20c"
    ),
    "song_data/A/A/A/TRAAAJ098P9IOB8QSP.json": (
        "c3073f6819e043b228e613c1d33853de500425740af3c2d24f32be99665787c3"
    ),
    "song_data/A/A/A/TRAAAN0QL4WUXGIAH7.json": (
        "8506d59ee8798a4bccd2034fa2c3c4f66c218ffc8ed4391408cf6243b493ddef"
    ),
    "song_data/A/A/A/TRAAAT2LV2WTGDT47B.json": (
        "66dca0927010c5cc684c3bccb772157268c4f4e2c3e0a1f0085e844ed64f3657"
    ),
    "truth.json": ("f49b87e6eccd1a1c0a40aa5563ba2de010ddbb7f786a0b4fecbdc6a39c2f00ed"),
}
SONG_KEYS = [
    "num_songs",
    "artist_id",
    "artist_latitude",
    "artist_longitude",
    "artist_location",
    "artist_name",
    "song_id",
    "title",
    "duration",
    "year",
]
LOG_KEYS = [
    "artist",
    "auth",
    "firstName",
    "gender",
    "itemInSession",
    "lastName",
    "length",
    "level",
    "location",
    "method",
    "page",
    "registration",
    "sessionId",
    "song",
    "status",
    "ts",
    "userAgent",
    "userId",
]
# A line copied byte for byte from the real log_data/2018/11/2018-11-02-events.json.
REAL_LINE = (
    r'{"artist":"Calle 13 Featuring Caf\u00c3\u0083\u00c2\u00a9 Tacuba","auth":"Logged In",'
    r'"firstName":"Lily","gender":"F","itemInSession":37,"lastName":"Koch","length":293.32853,'
    r'"level":"paid","location":"Chicago-Naperville-Elgin, IL-IN-WI","method":"PUT",'
    r'"page":"NextSong","registration":1541048010796.0,"sessionId":172,'
    r'"song":"No Hay Nadie Como T\u00c3\u0083\u00c2\u00ba","status":200,"ts":1541157637796,'
    r'"userAgent":"\"Mozilla\/5.0 (X11; Linux x86_64) AppleWebKit\/537.36 (KHTML, like Gecko) '
    r'Ubuntu Chromium\/36.0.1985.125 Chrome\/36.0.1985.125 Safari\/537.36\"","userId":"15"}'
)


def log_format(record):
    """How every real log line is serialized (verified on all 8056 real lines)."""
    return json.dumps(record, separators=(",", ":")).replace("/", "\\/")


def double_encode(text):
    return text.encode("utf-8").decode("latin-1").encode("utf-8").decode("latin-1")


def read_tree(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def song_paths(root):
    return sorted((root / "song_data").glob("*/*/*/*.json"))


def log_paths(root):
    return sorted((root / "log_data").glob("*/*/*.json"))


def read_logs(root):
    return [
        json.loads(line)
        for p in log_paths(root)
        for line in p.read_text(encoding="ascii").split("\n")
    ]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    return out, generate_data.generate(str(out), **SMALL)


def test_same_seed_gives_identical_bytes_even_in_another_process(tmp_path):
    generate_data.generate(str(tmp_path / "a"), **SMALL)
    args = [f"--{key}={value}" for key, value in SMALL.items()]
    run_script(*TOOL, "--out", str(tmp_path / "b"), *args, env={"PYTHONHASHSEED": "123"})
    first, second = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert len(first) == SMALL["songs"] + SMALL["days"] + 1
    assert first == second


def test_every_byte_of_a_pinned_set_is_unchanged(tmp_path):
    truth = generate_data.generate(str(tmp_path), **PINNED)
    assert truth["example_resolved_play"] and truth["example_unresolved_play"]
    assert truth["example_user"]
    digests = {path: hashlib.sha256(data).hexdigest() for path, data in read_tree(tmp_path).items()}
    assert digests == PINNED_SHA256


def test_other_seed_gives_other_data(tmp_path):
    generate_data.generate(str(tmp_path / "a"), **SMALL)
    generate_data.generate(str(tmp_path / "b"), **{**SMALL, "seed": 8})
    first, second = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert set(first) != set(second)  # other track ids
    assert (
        first["log_data/2018/11/2018-11-26-events.json"]
        != second["log_data/2018/11/2018-11-26-events.json"]
    )


def test_only_song_data_log_data_and_truth_are_replaced(tmp_path):
    (tmp_path / "song_data" / "Z").mkdir(parents=True)
    (tmp_path / "song_data" / "Z" / "stale.json").write_text("{}")
    (tmp_path / "truth.json").write_text("stale")
    (tmp_path / "keep.txt").write_text("mine")
    truth = generate_data.generate(str(tmp_path), **SMALL)
    assert not (tmp_path / "song_data" / "Z").exists()
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert json.loads((tmp_path / "truth.json").read_text()) == truth
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "keep.txt",
        "log_data",
        "song_data",
        "truth.json",
    ]


def test_song_files_have_udacity_layout_and_bytes(small):
    root, truth = small
    paths = song_paths(root)
    assert len(paths) == truth["song_files"] == SMALL["songs"]
    by_artist = {}
    for path in paths:
        track = path.stem
        assert re.fullmatch(r"TR[A-Z0-9]{16}", track)
        assert path.relative_to(root).parts[:4] == ("song_data", track[2], track[3], track[4])
        text = path.read_bytes().decode("ascii")
        record = json.loads(text)
        assert list(record) == SONG_KEYS
        assert text == json.dumps(record)  # default separators, \u escapes, no newline
        assert record["num_songs"] == 1
        assert re.fullmatch(r"SO[A-Z0-9]{16}", record["song_id"])
        assert re.fullmatch(r"AR[A-Z0-9]{16}", record["artist_id"])
        assert re.fullmatch(r"\d+\.\d{1,5}", repr(record["duration"]))
        artist = tuple(record[k] for k in SONG_KEYS[1:6])
        assert by_artist.setdefault(record["artist_id"], artist) == artist
    records = [json.loads(p.read_text()) for p in paths]
    assert any(r["year"] == 0 for r in records)
    assert any(r["artist_location"] == "" for r in records)
    assert any(r["artist_latitude"] is None and r["artist_location"] for r in records)
    assert any(not (r["title"] + r["artist_name"]).isascii() for r in records)
    assert any('"' in r["title"] + r["artist_name"] for r in records)
    assert len(by_artist) < len(records)  # some artists have several songs


def test_log_files_have_udacity_layout_and_bytes(small):
    root, _ = small
    first = dt.date.fromisoformat(SMALL["start"])
    days = [first + dt.timedelta(d) for d in range(SMALL["days"])]
    expected = [f"log_data/{d:%Y}/{d:%m}/{d:%Y-%m-%d}-events.json" for d in days]
    assert [p.relative_to(root).as_posix() for p in log_paths(root)] == expected
    for path, day in zip(log_paths(root), days, strict=True):
        text = path.read_bytes().decode("ascii")
        assert not text.endswith("\n")
        stamps = []
        for line in text.split("\n"):
            record = json.loads(line)
            assert list(record) == LOG_KEYS
            assert line == log_format(record)
            stamps.append(record["ts"])
            assert type(record["ts"]) is int and type(record["sessionId"]) is int
            assert type(record["itemInSession"]) is int and type(record["userId"]) is str
            assert EPOCH + dt.timedelta(days=record["ts"] // 86_400_000) == day  # UTC date
            if record["page"] == "NextSong":
                assert record["auth"] == "Logged In" and record["method"] == "PUT"
                assert type(record["length"]) is float and record["song"] and record["artist"]
            else:
                assert record["artist"] is record["song"] is record["length"] is None
            if record["auth"] == "Logged Out":
                assert record["userId"] == ""
                assert {
                    record[k]
                    for k in (
                        "firstName",
                        "lastName",
                        "gender",
                        "location",
                        "userAgent",
                        "registration",
                    )
                } == {None}
            else:
                assert record["userId"].isdigit()
                assert type(record["registration"]) is float
                agent = record["userAgent"]
                assert (agent[0] == agent[-1] == '"') == ("," in agent)
        assert stamps == sorted(stamps)


def test_log_format_matches_a_real_udacity_line():
    record = json.loads(REAL_LINE)
    assert log_format(record) == REAL_LINE
    assert ftfy.fix_text(record["song"]) == "No Hay Nadie Como Tú"
    assert double_encode("No Hay Nadie Como Tú") == record["song"]


def test_format_rules_hold_for_every_real_udacity_file(real_data):
    songs = sorted(real_data.glob("song_data/*/*/*/*.json"))
    logs = sorted(real_data.glob("log_data/*/*/*.json"))
    assert (len(songs), len(logs)) == (71, 30)
    for path in songs:
        text = path.read_text(encoding="ascii")
        assert text == json.dumps(json.loads(text))
    for path in logs:
        text = path.read_text(encoding="ascii")
        assert not text.endswith("\n")
        assert all(line == log_format(json.loads(line)) for line in text.split("\n"))


def test_non_ascii_play_text_is_double_encoded_like_the_real_logs(small):
    root, _ = small
    texts = {r[k] for r in read_logs(root) if r["page"] == "NextSong" for k in ("song", "artist")}
    broken = sorted(t for t in texts if not t.isascii())
    assert len(broken) >= 5
    for text in broken:
        assert max(map(ord, text)) < 256 and "\u00c3" in text
        assert double_encode(ftfy.fix_text(text)) == text


def recompute(root):
    """What an ETL built on pandas + ftfy loads from the files."""
    songs = pd.DataFrame([json.loads(p.read_text()) for p in song_paths(root)])
    logs = pd.DataFrame(read_logs(root))
    plays = logs[logs.page == "NextSong"].copy()
    plays["title"] = plays.song.map(ftfy.fix_text)
    plays["artist_name"] = plays.artist.map(ftfy.fix_text)
    plays = plays.merge(
        songs[["title", "artist_name", "duration", "song_id", "artist_id"]],
        how="left",
        left_on=["title", "artist_name", "length"],
        right_on=["title", "artist_name", "duration"],
    )
    plays = plays.sort_values(["ts", "sessionId", "itemInSession"])
    levels = plays.groupby("userId")["level"].last()
    return songs, logs, plays, levels


def test_truth_matches_independent_recomputation_from_files(small):
    root, truth = small
    songs, logs, plays, levels = recompute(root)
    resolved = plays[plays.song_id.notna()]
    non_ascii = plays[~(plays.song + plays.artist).map(str.isascii)]
    users_per_ts = plays.groupby("ts").userId.nunique()
    levels_per_user = plays.groupby("userId")["level"].nunique()
    assert {
        "song_files": len(song_paths(root)),
        "log_files": len(log_paths(root)),
        "log_records": len(logs),
        "nextsong_events": int((logs.page == "NextSong").sum()),
        "songs": songs.song_id.nunique(),
        "artists": songs.artist_id.nunique(),
        "songplays": len(plays),
        "songplays_resolved": len(resolved),
        "time": plays.ts.nunique(),
        "users": plays.userId.nunique(),
        "users_free": int((levels == "free").sum()),
        "users_paid": int((levels == "paid").sum()),
        "logged_out_events": int((logs.userId == "").sum()),
        "shared_ts": int((users_per_ts > 1).sum()),
        "non_ascii_plays": len(non_ascii),
        "non_ascii_resolved": int(non_ascii.song_id.notna().sum()),
        "level_changed_users": int((levels_per_user > 1).sum()),
        "levels": dict(sorted(levels.items(), key=lambda kv: int(kv[0]))),
    } == {
        key: truth[key]
        for key in (
            "song_files",
            "log_files",
            "log_records",
            "nextsong_events",
            "songs",
            "artists",
            "songplays",
            "songplays_resolved",
            "time",
            "users",
            "users_free",
            "users_paid",
            "logged_out_events",
            "shared_ts",
            "non_ascii_plays",
            "non_ascii_resolved",
            "level_changed_users",
            "levels",
        )
    }
    assert list(truth["levels"]) == list(dict(sorted(levels.items(), key=lambda kv: int(kv[0]))))
    assert truth["log_records"] == SMALL["events"]
    assert not logs.duplicated(["userId", "sessionId", "itemInSession"]).any()
    assert songs.duplicated(["title", "artist_name", "duration"]).sum() == 0
    assert set(logs.userId) - set(plays.userId) - {""}  # users who never played
    assert 0 < truth["non_ascii_resolved"] < truth["non_ascii_plays"]


def test_truth_examples_are_real_rows(small):
    root, truth = small
    _, _, plays, _ = recompute(root)
    example = truth["example_resolved_play"]
    candidates = plays[plays.song_id.notna() & ~plays.title.map(str.isascii)]
    row = candidates.iloc[0]  # the earliest, plays being sorted by the natural order
    assert example == {
        "user_id": row.userId,
        "session_id": int(row.sessionId),
        "item_in_session": int(row.itemInSession),
        "ts": int(row.ts),
        "song_id": row.song_id,
        "artist_id": row.artist_id,
        "title": row.title,
        "artist": row.artist_name,
        "length": row.length,
    }
    assert not example["title"].isascii()

    miss = truth["example_unresolved_play"]
    row = plays[
        (plays.userId == miss["user_id"])
        & (plays.sessionId == miss["session_id"])
        & (plays.itemInSession == miss["item_in_session"])
    ].iloc[0]
    assert pd.isna(row.song_id) and row.length == miss["length"] and row.ts == miss["ts"]
    assert (row.title, row.artist_name) == (miss["title"], miss["artist"])

    user = truth["example_user"]
    events = plays[plays.userId == user["user_id"]]
    assert set(events.level) == {"free", "paid"}
    assert events.iloc[-1].level == user["level"]
    assert (events.firstName.iloc[0], events.lastName.iloc[0], events.gender.iloc[0]) == (
        user["first_name"],
        user["last_name"],
        user["gender"],
    )


def test_default_sample_has_the_promised_quirks(tmp_path):
    truth = generate_data.generate(str(tmp_path))
    assert truth["params"] == {
        "seed": 42,
        "songs": 400,
        "events": 20000,
        "users": 100,
        "start": "2018-11-01",
        "days": 30,
    }
    assert truth["log_files"] == 30 and truth["log_records"] == 20000
    songs = pd.DataFrame([json.loads(p.read_text()) for p in song_paths(tmp_path)])
    assert (songs.artist_id.value_counts() >= 3).sum() >= 5
    assert truth["songplays_resolved"] >= 1000
    assert 0.8 < truth["nextsong_events"] / truth["log_records"] < 0.9
    assert truth["level_changed_users"] >= 5
    assert truth["shared_ts"] >= 5
    assert truth["logged_out_events"] >= 200
    assert truth["non_ascii_plays"] >= 50 and truth["non_ascii_resolved"] >= 10
    assert truth["users_free"] >= 10 and truth["users_paid"] >= 10
    stamps = pd.to_datetime(pd.Series([r["ts"] for r in read_logs(tmp_path)]), unit="ms")
    assert stamps.dt.day_of_week.nunique() == 7 and stamps.dt.hour.nunique() == 24
    assert sum(len(b) for b in read_tree(tmp_path).values()) < 10_000_000


def test_help_ends_with_an_example_that_generates_what_it_says_and_loads_that_folder(tmp_path):
    result = run_script(*TOOL, "--help")
    commands = [
        line.split("  #")[0].split()
        for line in result.stdout.splitlines()
        if line.startswith("  python")
    ]
    generate, load, back = commands
    assert generate[:3] == ["python", *TOOL] and load[:2] == ["python", "etl.py"]
    assert back == ["python", "etl.py", "--full-refresh"]  # to the sample in data/
    options = dict(zip(generate[3::2], generate[4::2]))
    assert load[2:] == ["--data", options["--out"], "--full-refresh"]
    out = tmp_path / "example"
    run = run_script(*generate[1:], "--out", str(out))
    truth = json.loads((out / "truth.json").read_text())
    assert (truth["log_records"], truth["song_files"]) == (100_000, 2000)
    assert (int(options["--events"]), int(options["--songs"])) == (100_000, 2000)
    assert run.stdout.startswith(f"{out}: 2000 song files, 100000 events in 30 log files, ")


def test_cli_rejects_non_positive_sizes(tmp_path):
    result = run_script(*TOOL, "--out", str(tmp_path), "--events", "0", check=False)
    assert result.returncode == 2 and "positive" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_it_cannot_write_is_one_line_and_exit_3(tmp_path):
    (tmp_path / "a file").write_text("")
    out = tmp_path / "a file" / "data"
    done = run_script(*TOOL, "--out", str(out), "--events", "10", check=False)
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr == f"error: cannot write {out}: Not a directory\n"


def test_an_earlier_set_it_cannot_remove_is_named_by_its_folder_and_kept(tmp_path):
    """As another user's set in a shared /tmp/sparkify is: rmtree's own error names an entry
    without its folder. chattr +i makes a file even root cannot remove."""
    out = tmp_path / "data"
    run_script(*TOOL, "--out", str(out), "--events", "10", "--songs", "3")
    kept = next((out / "song_data").rglob("*.json"))
    if subprocess.run(["chattr", "+i", str(kept)], capture_output=True).returncode != 0:
        pytest.skip("needs chattr +i (root, on a file system that has it)")
    try:
        done = run_script(*TOOL, "--out", str(out), "--events", "10", check=False)
    finally:
        subprocess.run(["chattr", "-i", str(kept)], check=True)
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr == (
        f"error: cannot replace the data set in {out}: {out / 'song_data'} holds an earlier "
        "set's files this user cannot remove (Operation not permitted); those it could are "
        "removed\n"
    )
    assert kept.exists()


@pytest.mark.parametrize(
    ("start", "days"),
    [("1969-12-31", 1), ("1969-12-20", 30), ("9999-12-31", 2), ("9999-12-01", 40)],
)
def test_cli_refuses_days_a_ts_cannot_hold_and_writes_nothing(tmp_path, start, days):
    """A play's ts is epoch milliseconds from 1970 to the end of year 9999 (the loader rejects
    the rest): days outside those would make a truth.json the load cannot give."""
    result = run_script(
        *TOOL, "--out", str(tmp_path), "--start", start, "--days", str(days), check=False
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        f"error: --start {start} and --days {days} reach days outside 1970-01-01 to "
        "9999-12-31, the days a log's ts can hold"
    )
    assert list(tmp_path.iterdir()) == []
