"""Generate a seeded Sparkify data set byte-compatible with the Udacity one.

The real sample is too small (71 songs, 8k events, a single play that matches a
song) to check an ETL's results or measure its speed.  This writes data of any
size with the same layout, format and quirks, plus ``truth.json``: what a
correct ETL must load from it, known from construction rather than re-parsing.
Standard library only, so it runs anywhere the project does.

generate() runs five steps, every random draw from one seeded random.Random in a fixed order
(same arguments, same bytes): the catalog (songs, and songs it lacks); the users and their
sessions (lists of events); the timeline (a start for each session); the files (one per song,
one per day of logs); the truth (tallied over the same events).  The sections below follow them.
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import collections
import datetime as dt
import itertools
import json
import operator
import os
import random
import shutil
import string
from pathlib import Path
from typing import NamedTuple

import cli

ALNUM = string.ascii_uppercase + string.digits
DAY = 86400
EPOCH = dt.date(1970, 1, 1)  # a ts of 0
MS_SUFFIX = 796  # every real ts and registration ends in 796 ms

# Real format: compact separators, ASCII-escaped, "/" escaped, fixed key order.
LINE = (
    '{"artist":%s,"auth":"%s","firstName":%s,"gender":%s,"itemInSession":%d,'
    '"lastName":%s,"length":%s,"level":"%s","location":%s,"method":"%s",'
    '"page":"%s","registration":%s,"sessionId":%d,"song":%s,"status":%d,'
    '"ts":%d,"userAgent":%s,"userId":"%s"}'
)
# The profile fields of a logged-out event (firstName to userAgent null, userId ""), and the
# song fields (artist, length, song) of any page but NextSong.
GUEST_PROFILE = ("null",) * 6 + ("",)
NO_SONG = ("null",) * 3


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


# ---------------------------------------------------------------- 1. the catalog
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


# ---------------------------------------------------------------- 2. users and sessions
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


# ---------------------------------------------------------------- 3. the timeline
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


# ---------------------------------------------------------------- 4. the files
def _write_ascii(path, text):
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def _clear_outputs(out):
    """Remove what an earlier run wrote to out (song_data, log_data, truth.json), nothing else."""
    for name in ("song_data", "log_data"):
        tree = os.path.join(out, name)
        if os.path.isdir(tree):
            try:
                shutil.rmtree(tree)
            except OSError as exc:  # its message names an entry, not where it is
                raise cli.UserError(
                    f"cannot replace the data set in {out}: {tree} holds an earlier set's files "
                    f"this user cannot remove ({exc.strerror}); those it could are removed"
                ) from None
    if os.path.exists(os.path.join(out, "truth.json")):
        os.remove(os.path.join(out, "truth.json"))
    os.makedirs(out, exist_ok=True)


def _write_songs(out, songs):
    """One file per song, song_data/A/B/C/TRABC….json after the track id's 3rd to 5th letters."""
    folders = set()
    for song in songs:
        track = song.track_id
        folder = os.path.join(out, "song_data", track[2], track[3], track[4])
        if folder not in folders:
            os.makedirs(folder, exist_ok=True)
            folders.add(folder)
        record = {
            "num_songs": 1,
            **song.artist._asdict(),
            "song_id": song.song_id,
            "title": song.title,
            "duration": song.duration,
            "year": song.year,
        }
        _write_ascii(os.path.join(folder, track + ".json"), json.dumps(record))


def _day_parts(sessions, days):
    """For each day, the parts of the sessions on it: (session id, start second, user index,
    events, the part's first and end index in events).  Session ids count from 1."""
    by_day = [[] for _ in range(days)]
    for sid, (begin, who, events) in enumerate(sessions, 1):
        first = 0
        while first < len(events):  # offsets never decrease: a day's events are a slice
            day = (begin + events[first][0]) // DAY
            next_day = (day + 1) * DAY - begin
            stop = bisect.bisect_left(events, next_day, first, key=lambda event: event[0])
            by_day[day].append((sid, begin, who, events, first, stop))
            first = stop
    return by_day


# A log event: (ts, session id, item in session, user index, kind, level, track), by position;
# the counts read these fields of it.
TS, WHO, KIND, LEVEL, TRACK = 0, 3, 4, 5, 6


def _log_days(day_parts, base_ms):
    """Each day's log events in file order, sorted: ts, session id and item set them apart."""
    for parts in day_parts:
        yield sorted(
            (base_ms + (begin + offset) * 1000, sid, item, who, kind, level, track)
            for sid, begin, who, events, first, stop in parts
            for item, (offset, kind, level, track) in enumerate(events[first:stop], first)
        )


def _line_maker(people, tracks):
    """The function giving an event's log line; every field's text is made once, up front."""
    profiles = [  # firstName, gender, lastName, location, registration, userAgent, userId
        (*map(_log_str, u[:4]), repr(u.registration), _log_str(u.agent), u.uid) for u in people
    ]
    songs = [
        (_log_str(_double_encode(artist)), repr(duration), _log_str(_double_encode(title)))
        for title, artist, duration in tracks
    ]

    def line(event):
        ts, sid, item, who, kind, level, track = event
        page, method, status, logged_out = kind
        auth = "Logged Out" if logged_out else "Logged In"
        first, gender, last, location, registration, agent, uid = (
            GUEST_PROFILE if logged_out else profiles[who]
        )
        artist, length, song = songs[track] if track >= 0 else NO_SONG
        return LINE % (  # in the keys' order
            (artist, auth, first, gender, item, last, length, level, location)
            + (method, page, registration, sid, song, status, ts, agent, uid)
        )

    return line


def _write_logs(out, sessions, people, tracks, catalog, first_day, days):
    """Write one file per day with events, log_data/YYYY/MM/YYYY-MM-DD-events.json, a line
    each in file order; return the tally of what they hold."""
    line, tally = _line_maker(people, tracks), _Tally(tracks, catalog)
    base_ms = calendar.timegm(first_day.timetuple()) * 1000 + MS_SUFFIX
    for day, events in enumerate(_log_days(_day_parts(sessions, days), base_ms)):
        if events:
            date = first_day + dt.timedelta(day)
            folder = os.path.join(out, "log_data", f"{date:%Y}", f"{date:%m}")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{date:%Y-%m-%d}-events.json")
            _write_ascii(path, "\n".join(map(line, events)))
        tally.add(events)
    return tally


# ---------------------------------------------------------------- 5. the truth
class _Tally:
    """What a correct ETL loads from the logs, counted day by day in file order: so a user's
    last play is the latest, and the first play that fits an example is the earliest."""

    def __init__(self, tracks, catalog):
        self.tracks, self.n_catalog = tracks, len(catalog)
        self.catalog_pairs = {(song.title, song.artist.artist_name) for song in catalog}
        self.non_ascii = [not (title + artist).isascii() for title, artist, _ in tracks]
        self.counts = collections.Counter()  # by their names in truth.json
        self.final_level = {}  # user index -> level of the user's last play
        self.levels_played = set()  # (user index, level)
        self.resolved = None  # the first resolved play with a non-ASCII title
        self.near_miss = None  # the first unresolved play whose title and artist are in song_data

    def add(self, events):
        """Count one day's events, given in file order."""
        tracks, n_catalog, non_ascii = self.tracks, self.n_catalog, self.non_ascii
        ts_and_user, user_and_level = operator.itemgetter(TS, WHO), operator.itemgetter(WHO, LEVEL)
        plays = [event for event in events if event[KIND] is NEXT_SONG]
        resolved = [play for play in plays if play[TRACK] < n_catalog]
        users_at = collections.Counter(ts for ts, _ in set(map(ts_and_user, plays)))
        self.counts += collections.Counter(
            log_files=1 if events else 0,
            log_records=len(events),
            logged_out_events=sum(event[KIND].logged_out for event in events),
            songplays=len(plays),
            songplays_resolved=len(resolved),
            time=len(users_at),
            shared_ts=sum(users > 1 for users in users_at.values()),
            non_ascii_plays=sum(non_ascii[play[TRACK]] for play in plays),
            non_ascii_resolved=sum(non_ascii[play[TRACK]] for play in resolved),
        )
        self.final_level.update(map(user_and_level, plays))
        self.levels_played.update(map(user_and_level, plays))
        if self.resolved is None:
            firsts = (play for play in resolved if not tracks[play[TRACK]][0].isascii())
            self.resolved = next(firsts, None)
        if self.near_miss is None:
            misses = (play for play in plays if play[TRACK] >= n_catalog)
            firsts = (play for play in misses if tracks[play[TRACK]][:2] in self.catalog_pairs)
            self.near_miss = next(firsts, None)


def _example_play(play, people, tracks, catalog):
    """A play as truth.json shows it, with its song's ids when it resolves."""
    ts, sid, item, who, _, _, track = play
    title, artist, length = tracks[track]
    song = catalog[track] if track < len(catalog) else None
    ids = {"song_id": song.song_id, "artist_id": song.artist.artist_id} if song else {}
    return {
        "user_id": people[who].uid,
        "session_id": sid,
        "item_in_session": item,
        "ts": ts,
        **ids,
        "title": title,
        "artist": artist,
        "length": length,
    }


def _example_user(user, level):
    return {
        "user_id": user.uid,
        "first_name": user.first,
        "last_name": user.last,
        "gender": user.gender,
        "level": level,
    }


def _truth(params, people, tracks, catalog, tally):
    """What a correct ETL must load, in truth.json's order; users in userId order."""
    counts, resolved, near_miss = tally.counts, tally.resolved, tally.near_miss
    levels = {people[who].uid: level for who, level in sorted(tally.final_level.items())}
    levels_per_user = collections.Counter(who for who, _ in tally.levels_played)
    changed = sorted(who for who, count in levels_per_user.items() if count == 2)
    return {
        "params": params,
        "song_files": len(catalog),
        "log_files": counts["log_files"],
        "log_records": counts["log_records"],
        "nextsong_events": counts["songplays"],
        "songs": len(catalog),
        "artists": len({song.artist.artist_id for song in catalog}),
        "songplays": counts["songplays"],
        "songplays_resolved": counts["songplays_resolved"],
        "time": counts["time"],
        "users": len(levels),
        "users_free": sum(level == "free" for level in levels.values()),
        "users_paid": sum(level == "paid" for level in levels.values()),
        "logged_out_events": counts["logged_out_events"],
        "shared_ts": counts["shared_ts"],
        "non_ascii_plays": counts["non_ascii_plays"],
        "non_ascii_resolved": counts["non_ascii_resolved"],
        "level_changed_users": len(changed),
        "example_resolved_play": resolved and _example_play(resolved, people, tracks, catalog),
        "example_unresolved_play": near_miss and _example_play(near_miss, people, tracks, catalog),
        "example_user": (
            _example_user(people[changed[0]], tally.final_level[changed[0]]) if changed else None
        ),
        "levels": levels,
    }


# ---------------------------------------------------------------- the run and the command
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
    sessions = _timeline(rng, people, events, pick_track, draw_start, days * DAY)

    _clear_outputs(out)
    _write_songs(out, catalog)
    tally = _write_logs(out, sessions, people, tracks, catalog, first_day, days)
    params = dict(seed=seed, songs=songs, events=events, users=n_users, start=start, days=days)
    truth = _truth(params, people, tracks, catalog, tally)
    _write_ascii(os.path.join(out, "truth.json"), json.dumps(truth, indent=2) + "\n")
    return truth


def _day(text):
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None
    return text


DESCRIPTION = """\
Write a deterministic Sparkify data set (song_data/, log_data/) in the exact
format of the Udacity data, plus truth.json with the row counts and values a
correct ETL must produce from it."""
EPILOG = """\
example (100,000 events and 2,000 song files, then load them in place of what the tables hold):
  python -m tools.generate_data --out /tmp/sparkify --events 100000 --songs 2000
  python etl.py --data /tmp/sparkify --full-refresh
  python etl.py --full-refresh    # back to the sample in data/: one database holds one feed

exit codes: 0 written; 2 bad arguments; 3 the output folder cannot be written"""


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m tools.generate_data",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        help="days of logs, a file for each day with events (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    first = dt.date.fromisoformat(args.start)
    if first < EPOCH or (dt.date.max - first).days < args.days - 1:
        parser.error(
            f"--start {args.start} and --days {args.days} reach days outside 1970-01-01 to "
            "9999-12-31, the days a log's ts can hold"
        )
    return cli.run_command(lambda: write_data_set(args))


def write_data_set(args: argparse.Namespace) -> int:
    try:
        truth = generate(**vars(args))
    except OSError as exc:  # a folder it may not write, a full disk
        where = f" {exc.filename}" if exc.filename else ""
        raise cli.UserError(f"cannot write{where}: {exc.strerror}") from None
    cli.write_out(
        f"{args.out}: {truth['song_files']} song files, {truth['log_records']} events in "
        f"{truth['log_files']} log files, {truth['songplays_resolved']}/{truth['songplays']} "
        f"plays resolve",
        f"the data set is written in {args.out}",
    )
    return 0


if __name__ == "__main__":
    cli.finish(main)
