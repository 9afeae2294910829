"""Generate a seeded Sparkify data set byte-compatible with the Udacity one.

The real sample is too small (71 songs, 8k events, a single play that matches a
song) to check an ETL's results or measure its speed.  This writes data of any
size with the same layout, format and quirks, plus ``truth.json``: what a
correct ETL must load from it, known from construction rather than re-parsing.
Standard library only, so it runs anywhere the project does.  The names, words,
places and user agents it draws from are in generate_data_words.json beside it.
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import datetime as dt
import itertools
import json
import os
import random
import shutil
import string
import sys
from pathlib import Path
from typing import NamedTuple

import cli

ALNUM = string.ascii_uppercase + string.digits
DAY = 86400
MS_SUFFIX = 796  # every real ts and registration ends in 796 ms

# Real format: compact separators, ASCII-escaped, "/" escaped, fixed key order.
LINE = (
    '{"artist":%s,"auth":"%s","firstName":%s,"gender":%s,"itemInSession":%d,'
    '"lastName":%s,"length":%s,"level":"%s","location":%s,"method":"%s",'
    '"page":"%s","registration":%s,"sessionId":%d,"song":%s,"status":%d,'
    '"ts":%d,"userAgent":%s,"userId":"%s"}'
)


class Kind(NamedTuple):
    """What an event is: its page and request, and whether the user is logged out."""

    page: str
    method: str
    status: int
    logged_out: bool  # logged-out events carry no profile and userId ""


NEXT_SONG = Kind("NextSong", "PUT", 200, False)
HOME = Kind("Home", "GET", 200, False)
SETTINGS = Kind("Settings", "GET", 200, False)
SAVE_SETTINGS = Kind("Save Settings", "PUT", 307, False)
HELP = Kind("Help", "GET", 200, False)
ABOUT = Kind("About", "GET", 200, False)
ERROR = Kind("Error", "GET", 404, False)
UPGRADE = Kind("Upgrade", "GET", 200, False)
SUBMIT_UPGRADE = Kind("Submit Upgrade", "PUT", 307, False)
DOWNGRADE = Kind("Downgrade", "GET", 200, False)
SUBMIT_DOWNGRADE = Kind("Submit Downgrade", "PUT", 307, False)
LOGOUT = Kind("Logout", "PUT", 307, False)
GUEST_HOME = Kind("Home", "GET", 200, True)
GUEST_HELP = Kind("Help", "GET", 200, True)
GUEST_ABOUT = Kind("About", "GET", 200, True)
LOGIN = Kind("Login", "PUT", 307, True)
# The two events of a change of level, by the level before it.
SWITCH = {"free": (UPGRADE, SUBMIT_UPGRADE), "paid": (DOWNGRADE, SUBMIT_DOWNGRADE)}


def _cumulative(weights):
    return list(itertools.accumulate(weights, initial=0.0))[1:]


def _chooser(weighted):
    """A weighted draw of a kind among (kind, weight) pairs: a function of the rng."""
    kinds, cumulative = [kind for kind, _ in weighted], _cumulative(w for _, w in weighted)
    return lambda rng: kinds[_pick(cumulative, rng)]


def _pick(cumulative, rng):
    """Weighted choice of an index; min() guards against random() * total rounding up to total."""
    return min(bisect.bisect(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


# Non-song pages, by level: free users look at Upgrade, paid ones at Downgrade.
_ANY_LEVEL = ((HOME, 60), (SETTINGS, 5), (SAVE_SETTINGS, 1.5), (HELP, 5), (ABOUT, 3), (ERROR, 1))
BROWSE = {
    "free": _chooser(_ANY_LEVEL + ((UPGRADE, 4),)),
    "paid": _chooser(_ANY_LEVEL + ((DOWNGRADE, 7),)),
}
GUEST_BROWSE = _chooser(((GUEST_HOME, 8), (GUEST_HELP, 1), (GUEST_ABOUT, 1)))
SONG_SHARE = 0.9  # of logged-in events; gives ~85% NextSong overall
CATALOG_SHARE = 0.35  # of plays; the rest are songs missing from song_data
HOUR_WEIGHTS = (  # of a session start, by hour (UTC)
    (3, 2, 1.5, 1, 1, 1)  # 0 to 5
    + (1.5, 2.5, 3.5, 4, 4.5, 5)  # 6 to 11
    + (5.5, 5.5, 6, 6.5, 7, 7.5)  # 12 to 17
    + (7.5, 7, 6, 5, 4.5, 3.5)  # 18 to 23
)

# The names, words, places and user agents drawn from, in a data file beside this module.
_WORDS = json.loads(Path(__file__).with_name("generate_data_words.json").read_text("utf-8"))
FIRST_F, FIRST_M = _WORDS["first_names_female"], _WORDS["first_names_male"]
LAST = _WORDS["last_names"]
USER_LOCATIONS = _WORDS["user_locations"]
# Real agents containing a comma are wrapped in literal double quotes, others are not.
USER_AGENTS = _WORDS["user_agents"]
ADJ, NOUN, VERB = _WORDS["adjectives"], _WORDS["nouns"], _WORDS["verbs"]
# Each string gets at most one of these.  All are repaired exactly by ftfy.fix_text
# after double encoding; a few look-alikes (e.g. 'Håkan', 'š') are not and are left out.
NON_ASCII_WORDS, NON_ASCII_NAMES = _WORDS["non_ascii_words"], _WORDS["non_ascii_names"]
ARTIST_LOCATIONS = _WORDS["artist_locations"]  # [location, latitude, longitude]


class Artist(NamedTuple):
    """An artist's fields of a song file, named and ordered as there."""

    artist_id: str
    artist_latitude: float | None
    artist_longitude: float | None
    artist_location: str
    artist_name: str


class Song(NamedTuple):
    """A song file's content; its track id names the file."""

    track_id: str
    artist: Artist
    song_id: str
    title: str
    duration: float
    year: int


class User(NamedTuple):
    """A user account.  The first seven fields are the profile of its log events, in order."""

    first: str
    gender: str
    last: str
    location: str
    registration: float
    agent: str
    uid: str
    level: str  # at the start; a user who "changes" switches level once
    changes: bool
    browser: bool  # never plays a song
    weight: float  # relative share of the events


def _log_str(s):
    """Serialize a string exactly like the real event logs do."""
    return json.dumps(s).replace("/", "\\/")


def _double_encode(s):
    """Reproduce the real logs' mojibake: UTF-8 read as Latin-1, twice ('é' -> 'Ã\\x83Â©')."""
    return s.encode("utf-8").decode("latin-1").encode("utf-8").decode("latin-1")


def _new_id(rng, prefix, taken, head=""):
    while True:
        value = prefix + head + "".join(rng.choices(ALNUM, k=16 - len(head)))
        if value not in taken:
            taken.add(value)
            return value


def _title(rng):
    adj, noun, other = rng.choice(ADJ), rng.choice(NOUN), rng.choice(NOUN)
    r = rng.random()
    if r < 0.03:
        return f"{rng.choice(NON_ASCII_WORDS)} {noun}"
    if r < 0.06:
        return f"{adj} {rng.choice(NON_ASCII_WORDS)}"
    if r < 0.13:
        return f"Don't {rng.choice(VERB)} My {noun}"
    if r < 0.21:
        return f"{noun}, {other}"
    if r < 0.26:
        return f'The "{adj}" {noun}'
    if r < 0.31:
        return f"{noun}/{other}"
    if r < 0.4:
        return f"{adj} {noun} (Live)"
    if r < 0.55:
        return f"{noun} of the {other}"
    if r < 0.65:
        return f"{rng.choice(VERB)} the {noun}"
    return f"{adj} {noun}"


def _artist_name(rng):
    first = rng.choice(FIRST_F + FIRST_M)
    last = rng.choice(LAST)
    r = rng.random()
    if r < 0.04:
        return rng.choice(NON_ASCII_NAMES) + rng.choice(("", " Trio", " & Friends", " Quartet"))
    if r < 0.06:
        return f"{last} feat. {rng.choice(NON_ASCII_NAMES)}"
    if r < 0.35:
        return f"{first} {last}"
    if r < 0.5:
        return f"The {rng.choice(ADJ)} {rng.choice(NOUN)}s"
    if r < 0.58:
        return f"{first} & The {rng.choice(NOUN)}s"
    if r < 0.64:
        return f'{first} "{rng.choice(ADJ)}" {last}'
    if r < 0.7:
        return f"{last}, {rng.choice(LAST)} & {rng.choice(LAST)}"
    if r < 0.75:
        return f"{first} {last}/{rng.choice(FIRST_F)} {rng.choice(LAST)}"
    if r < 0.82:
        return f"DJ {rng.choice(ADJ)} {rng.choice(NOUN)}"
    return f"{rng.choice(ADJ)} {rng.choice(NOUN)}"


def _duration(rng):
    return round(min(1200.0, max(25.0, rng.gauss(240, 75))), 5)


def _artist(rng, name, taken):
    """An artist, often with a location, sometimes a location without coordinates."""
    located = rng.random() < 0.6
    location, lat, lon = rng.choice(ARTIST_LOCATIONS) if located else ("", None, None)
    if located and rng.random() < 0.25:
        lat = lon = None
    return Artist(_new_id(rng, "AR", taken), lat, lon, location, name)


def _catalog(rng, n_songs):
    """Song files: unique (title, artist, duration) so every resolved play has one song_id."""
    # Real track ids of the sample share a prefix; spread files over ~10 per leaf folder.
    letters = string.ascii_uppercase[: max(1, min(26, round((n_songs / 10) ** (1 / 3))))]
    taken, names, triples, songs = set(), set(), set(), []
    while len(songs) < n_songs:
        name = _artist_name(rng)
        if name in names:
            continue
        names.add(name)
        artist = _artist(rng, name, taken)
        count = 1 if rng.random() < 0.65 else rng.randint(2, 8)
        for _ in range(min(count, n_songs - len(songs))):
            title, duration = _title(rng), _duration(rng)
            if (title, name, duration) in triples:
                continue
            triples.add((title, name, duration))
            track = _new_id(rng, "TR", taken, "".join(rng.choices(letters, k=3)))
            song_id = _new_id(rng, "SO", taken)
            year = 0 if rng.random() < 0.4 else rng.randint(1965, 2010)
            songs.append(Song(track, artist, song_id, title, duration, year))
    return songs, triples


def _unknown_songs(rng, songs, triples, count):
    """Plays of songs absent from song_data, including near misses that must not resolve."""
    names = [song.artist.artist_name for song in songs]
    pool = []
    while len(pool) < count:
        r = rng.random()
        if r < 0.05:  # right title and artist, wrong duration
            song = rng.choice(songs)
            shift = rng.choice((-1, 1)) * rng.uniform(0.5, 5)
            item = (song.title, song.artist.artist_name, round(song.duration + shift, 5))
        elif r < 0.1:  # right title and duration, other artist
            song = rng.choice(songs)
            item = (song.title, rng.choice(names), song.duration)
        elif r < 0.35:  # known artist, song not in the catalog
            item = (_title(rng), rng.choice(names), _duration(rng))
        else:
            item = (_title(rng), _artist_name(rng), _duration(rng))
        if item not in triples:
            pool.append(item)
    return pool


def _popularity(rng, n):
    """Zipf-like cumulative weights in random order, so a few songs get most plays."""
    weights = [1 / (i + 1) ** 0.9 for i in range(n)]
    rng.shuffle(weights)
    return _cumulative(weights)


def _track_picker(rng, n_catalog, tracks):
    """A draw of a play: (track index, whole seconds it lasts); the catalog's tracks come first."""
    catalog_cum = _popularity(rng, n_catalog)
    unknown_cum = _popularity(rng, len(tracks) - n_catalog)
    seconds = [int(duration) for _, _, duration in tracks]

    def pick_track():
        if rng.random() < CATALOG_SHARE:
            track = _pick(catalog_cum, rng)
        else:
            track = n_catalog + _pick(unknown_cum, rng)
        return track, seconds[track]

    return pick_track


def _budgets(total, weights):
    """Split total exactly in proportion to weights (largest remainder)."""
    scale = total / sum(weights)
    raw = [w * scale for w in weights]
    out = [int(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (out[i] - raw[i], i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def _users(rng, n_users, window_start):
    """The accounts in userId order; a few are browsers, some change level once."""
    uids = sorted(rng.sample(range(2, 2 * n_users + 2), n_users))
    browsers = set(rng.sample(range(n_users), n_users // 30))  # never play a song
    users = []
    for i, uid in enumerate(uids):
        female = rng.random() < 0.55
        level = "paid" if rng.random() < 0.3 else "free"
        agent = rng.choice(USER_AGENTS)
        users.append(
            User(
                uid=str(uid),
                first=rng.choice(FIRST_F if female else FIRST_M),
                last=rng.choice(LAST),
                gender="F" if female else "M",
                location=rng.choice(USER_LOCATIONS),
                agent=f'"{agent}"' if "," in agent else agent,
                registration=float((window_start - rng.randint(DAY, 120 * DAY)) * 1000 + MS_SUFFIX),
                level=level,
                changes=rng.random() < (0.1 if level == "paid" else 0.25),
                browser=i in browsers,
                weight=(
                    rng.lognormvariate(0, 0.8)
                    * (2.5 if level == "paid" else 1)
                    * (0.15 if i in browsers else 1)
                ),
            )
        )
    return users


def _step(rng):
    """Seconds between two clicks; the real logs often repeat a ts within a session."""
    return 0 if rng.random() < 0.35 else rng.randint(1, 60)


class _Session:
    """One session's events, (offset in seconds, kind, level, track or -1), added in order."""

    __slots__ = ("rng", "events", "offset")

    def __init__(self, rng):
        self.rng, self.events, self.offset = rng, [], 0

    def view(self, kind, level):
        self.events.append((self.offset, kind, level, -1))
        self.offset += _step(self.rng)

    def play(self, track, seconds, level):
        self.events.append((self.offset, NEXT_SONG, level, track))
        self.offset += seconds


def _logged_out_ends(rng, n):
    """How many of a session's n events are guest pages + Login, and Logout + guest pages."""
    start = end = 0
    if n >= 3 and rng.random() < 0.08:  # starts logged out, then logs in
        start = 1 + rng.randint(0, min(2, n - 2))
    if n - start >= 2 and rng.random() < 0.12:  # logs out, may keep browsing as guest
        end = 1 + rng.randint(0, min(2, n - start - 2))
    return start, end


def _user_sessions(rng, user, budget, pick_track, limit):
    """The user's sessions in time order, each a list of events, budget events in all.

    Generated in order so that a planned upgrade/downgrade changes the level of
    everything after it, as in the real logs (the Submit event keeps the old level).
    """
    level = user.level
    switch_at = int(budget * rng.uniform(0.25, 0.75)) if user.changes else None
    song_share = 0.0 if user.browser else SONG_SHARE
    sessions, used = [], 0
    while used < budget:
        n = min(budget - used, 1 + int(rng.expovariate(1 / 9)), 150)
        start, end = _logged_out_ends(rng, n)
        session = _Session(rng)
        for kind in [GUEST_HOME] * (start - 1) + [LOGIN] * (start > 0):
            session.view(kind, level)
        left = n - start - end
        while left and session.offset < limit:
            if switch_at is not None and used + len(session.events) >= switch_at and left >= 2:
                for kind in SWITCH[level]:
                    session.view(kind, level)
                level = "free" if level == "paid" else "paid"
                switch_at, left = None, left - 2
                continue
            if rng.random() < song_share:
                track, seconds = pick_track()
                session.play(track, seconds, level)
            else:
                session.view(BROWSE[level](rng), level)
            left -= 1
        for kind in [LOGOUT] * (end > 0) + [GUEST_HOME] * (end - 1):
            session.view(kind, level)
        sessions.append(session.events)
        used += len(session.events)
    return sessions


def _guest_sessions(rng, budget):
    """Visitors who never log in: short sessions of logged-out pages, level free."""
    sessions = []
    while budget:
        session = _Session(rng)
        for _ in range(min(budget, rng.randint(1, 3))):
            session.view(GUEST_BROWSE(rng), "free")
        sessions.append(session.events)
        budget -= len(session.events)
    return sessions


def _start_drawer(rng, first_day, days):
    """A draw of a session start, seconds after the first midnight: fewer at weekends, at night."""
    day_cum = _cumulative(
        0.65 if (first_day + dt.timedelta(d)).weekday() >= 5 else 1 for d in range(days)
    )
    hour_cum = _cumulative(HOUR_WEIGHTS)

    def draw_start():
        return _pick(day_cum, rng) * DAY + _pick(hour_cum, rng) * 3600 + rng.randrange(3600)

    return draw_start


def _user_starts(rng, sessions, draw_start, window):
    """Start seconds for one user's sessions in order: apart when the window has room."""
    starts, prev_end = [], -DAY
    for events, wanted in zip(sessions, sorted(draw_start() for _ in sessions)):
        duration = events[-1][0]  # the last event's offset
        begin = max(wanted, prev_end + rng.randint(600, 4 * 3600))
        if begin + duration >= window:  # crowded timeline: overlap rather than overflow
            begin = min(wanted, window - 1 - duration)
        prev_end = max(prev_end, begin + duration)
        starts.append(begin)
    return starts


def _timeline(rng, people, n_events, pick_track, draw_start, window):
    """Every session as (start second, user index or -1 for a guest, events), sorted by start:
    session ids follow session start, as in the real logs."""
    guest_budget = n_events // 70
    budgets = _budgets(n_events - guest_budget, [user.weight for user in people])
    limit = window - 2000  # keeps every session shorter than the window
    placed = []
    for who, (user, budget) in enumerate(zip(people, budgets)):
        sessions = _user_sessions(rng, user, budget, pick_track, limit)
        for begin, events in zip(_user_starts(rng, sessions, draw_start, window), sessions):
            placed.append((begin, who, events))
    for events in _guest_sessions(rng, guest_budget):
        placed.append((min(draw_start(), window - 1 - events[-1][0]), -1, events))
    placed.sort(key=lambda session: session[0])  # stable: ties keep the order made
    return placed


def _write_songs(out, songs):
    folders = set()
    for track, (artist_id, lat, lon, location, name), song_id, title, duration, year in songs:
        folder = os.path.join(out, "song_data", track[2], track[3], track[4])
        if folder not in folders:
            os.makedirs(folder, exist_ok=True)
            folders.add(folder)
        record = {
            "num_songs": 1,
            "artist_id": artist_id,
            "artist_latitude": lat,
            "artist_longitude": lon,
            "artist_location": location,
            "artist_name": name,
            "song_id": song_id,
            "title": title,
            "duration": duration,
            "year": year,
        }
        with open(os.path.join(folder, track + ".json"), "w", encoding="ascii") as f:
            f.write(json.dumps(record))


def _write_logs(out, placed, people, tracks, catalog, first_day, days):
    """Write one file per day sorted by ts, tallying what a correct ETL must load."""
    guest = ("null",) * 6 + ("",)
    profiles = [  # firstName, gender, lastName, location, registration, userAgent, userId
        (*map(_log_str, u[:4]), repr(u.registration), _log_str(u.agent), u.uid) for u in people
    ]
    no_song = ("null", "null", "null")
    song_parts = [
        (_log_str(_double_encode(artist)), repr(duration), _log_str(_double_encode(title)))
        for title, artist, duration in tracks
    ]
    non_ascii = [not (title + artist).isascii() for title, artist, _ in tracks]
    n_catalog = len(catalog)
    catalog_pairs = {(title, artist[4]) for _, artist, _, title, _, _ in catalog}
    base_ms = calendar.timegm(first_day.timetuple()) * 1000 + MS_SUFFIX

    files = records = plays = resolved = distinct_ts = shared = guests = 0
    non_ascii_plays = non_ascii_resolved = 0
    latest = {}  # user index -> ((ts, sessionId, itemInSession), level) of the last play
    levels_seen = [0] * len(people)  # bit 1: played as free, bit 2: played as paid
    resolved_example = near_miss_example = None
    active, pos = [], 0
    for day in range(days):
        end = (day + 1) * DAY
        while pos < len(placed) and placed[pos][0] < end:
            begin, who, evts = placed[pos]
            pos += 1
            active.append([begin, pos, who, evts, 0])  # session id = rank by start
        rows, owner, shared_today, unfinished = [], {}, set(), []
        for entry in active:
            begin, sid, who, evts, cursor = entry
            profile = profiles[who] if who >= 0 else guest
            for item in range(cursor, len(evts)):
                off, kind, level, track = evts[item]
                if begin + off >= end:
                    entry[4] = item
                    unfinished.append(entry)
                    break
                ts = base_ms + (begin + off) * 1000
                page, method, status, logged_out = kind
                auth = "Logged Out" if logged_out else "Logged In"
                first, gender, last, location, registration, agent, uid = (
                    guest if logged_out else profile
                )
                artist, length, song = song_parts[track] if track >= 0 else no_song
                rows.append(
                    (
                        ts,
                        sid,
                        item,
                        LINE
                        % (
                            artist,
                            auth,
                            first,
                            gender,
                            item,
                            last,
                            length,
                            level,
                            location,
                            method,
                            page,
                            registration,
                            sid,
                            song,
                            status,
                            ts,
                            agent,
                            uid,
                        ),
                    )
                )
                if logged_out:
                    guests += 1
                if kind is not NEXT_SONG:
                    continue
                plays += 1
                if owner.setdefault(ts, who) != who:
                    shared_today.add(ts)
                key = (ts, sid, item)
                if who not in latest or key > latest[who][0]:
                    latest[who] = (key, level)
                levels_seen[who] |= 1 if level == "free" else 2
                title, name, duration = tracks[track]
                in_catalog = track < n_catalog
                resolved += in_catalog
                if non_ascii[track]:
                    non_ascii_plays += 1
                    non_ascii_resolved += in_catalog
                if (
                    in_catalog
                    and not title.isascii()
                    and (resolved_example is None or key < resolved_example[0])
                ):
                    song = catalog[track]
                    resolved_example = (
                        key,
                        {
                            "user_id": uid,
                            "session_id": sid,
                            "item_in_session": item,
                            "ts": ts,
                            "song_id": song[2],
                            "artist_id": song[1][0],
                            "title": title,
                            "artist": name,
                            "length": duration,
                        },
                    )
                elif (
                    not in_catalog
                    and (title, name) in catalog_pairs
                    and (near_miss_example is None or key < near_miss_example[0])
                ):
                    near_miss_example = (
                        key,
                        {
                            "user_id": uid,
                            "session_id": sid,
                            "item_in_session": item,
                            "ts": ts,
                            "title": title,
                            "artist": name,
                            "length": duration,
                        },
                    )
        active = unfinished
        distinct_ts += len(owner)
        shared += len(shared_today)
        if rows:
            rows.sort()
            date = first_day + dt.timedelta(day)
            folder = os.path.join(out, "log_data", f"{date:%Y}", f"{date:%m}")
            os.makedirs(folder, exist_ok=True)
            with open(
                os.path.join(folder, f"{date:%Y-%m-%d}-events.json"), "w", encoding="ascii"
            ) as f:
                f.write("\n".join(row[3] for row in rows))
            files += 1
            records += len(rows)

    players = sorted(latest)  # user index order is userId order
    levels = {people[w].uid: latest[w][1] for w in players}
    changed = [w for w in players if levels_seen[w] == 3]
    example_user = None
    if changed:
        user = people[changed[0]]
        example_user = {
            "user_id": user.uid,
            "first_name": user.first,
            "last_name": user.last,
            "gender": user.gender,
            "level": levels[user.uid],
        }
    return {
        "log_files": files,
        "log_records": records,
        "songplays": plays,
        "songplays_resolved": resolved,
        "time": distinct_ts,
        "users": len(levels),
        "users_free": sum(lv == "free" for lv in levels.values()),
        "users_paid": sum(lv == "paid" for lv in levels.values()),
        "logged_out_events": guests,
        "shared_ts": shared,
        "non_ascii_plays": non_ascii_plays,
        "non_ascii_resolved": non_ascii_resolved,
        "level_changed_users": len(changed),
        "example_resolved_play": resolved_example and resolved_example[1],
        "example_unresolved_play": near_miss_example and near_miss_example[1],
        "example_user": example_user,
        "levels": levels,
    }


def generate(
    out: str | os.PathLike = "data",
    songs: int = 400,
    events: int = 20000,
    seed: int = 42,
    users: int | None = None,
    start: str = "2018-11-01",
    days: int = 30,
) -> dict:
    """Write song_data/, log_data/ and truth.json under out; return the truth.

    Only those three entries of out are replaced.  Same arguments, same bytes.
    """
    if min(songs, events, days) < 1 or (users is not None and users < 1):
        raise ValueError("songs, events, users and days must be positive")
    n_users = users or max(100, events // 2000)
    first_day = dt.date.fromisoformat(start)
    window_start = calendar.timegm(first_day.timetuple())
    rng = random.Random(seed)

    catalog, triples = _catalog(rng, songs)
    unknown = _unknown_songs(rng, catalog, triples, max(200, songs))
    tracks = [(song.title, song.artist.artist_name, song.duration) for song in catalog] + unknown
    pick_track = _track_picker(rng, len(catalog), tracks)
    draw_start = _start_drawer(rng, first_day, days)
    people = _users(rng, n_users, window_start)
    placed = _timeline(rng, people, events, pick_track, draw_start, days * DAY)

    for name in ("song_data", "log_data"):
        if os.path.isdir(os.path.join(out, name)):
            shutil.rmtree(os.path.join(out, name))
    if os.path.exists(os.path.join(out, "truth.json")):
        os.remove(os.path.join(out, "truth.json"))
    os.makedirs(out, exist_ok=True)
    _write_songs(out, catalog)

    logs = _write_logs(out, placed, people, tracks, catalog, first_day, days)
    truth = {
        "params": {
            "seed": seed,
            "songs": songs,
            "events": events,
            "users": n_users,
            "start": start,
            "days": days,
        },
        "song_files": len(catalog),
        "log_files": logs.pop("log_files"),
        "log_records": logs.pop("log_records"),
        "nextsong_events": logs["songplays"],
        "songs": len(catalog),
        "artists": len({s[1][0] for s in catalog}),
        **logs,
    }
    with open(os.path.join(out, "truth.json"), "w", encoding="ascii") as f:
        f.write(json.dumps(truth, indent=2) + "\n")
    return truth


def _day(text):
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a deterministic Sparkify data set (song_data/, log_data/) in the "
        "exact format of the Udacity data, plus truth.json with the row counts "
        "and values a correct ETL must produce from it."
    )
    parser.add_argument(
        "--out",
        default="data",
        help="output directory; only its song_data, log_data and truth.json "
        "are replaced (default: %(default)s)",
    )
    parser.add_argument(
        "--songs", type=cli.positive, default=400, help="song files (default: %(default)s)"
    )
    parser.add_argument(
        "--events",
        type=cli.positive,
        default=20000,
        help="log records in total (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--users", type=cli.positive, help="user accounts (default: max(100, events // 2000))"
    )
    parser.add_argument(
        "--start",
        type=_day,
        default="2018-11-01",
        help="first day, YYYY-MM-DD (default: %(default)s)",
    )
    parser.add_argument(
        "--days",
        type=cli.positive,
        default=30,
        help="days of logs, one file per day (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    truth = generate(
        args.out, args.songs, args.events, args.seed, args.users, args.start, args.days
    )
    print(
        f"{args.out}: {truth['song_files']} song files, {truth['log_records']} events in "
        f"{truth['log_files']} log files, {truth['songplays_resolved']}/{truth['songplays']} "
        f"plays resolve"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
