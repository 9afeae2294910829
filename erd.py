"""Draw the entity-relationship diagram of the Sparkify tables from the live database catalog.

Reads tables, columns, types, NOT NULL, primary, unique and foreign keys of the project's tables
(sql_queries.TABLES) from pg_catalog, and on a Citus coordinator where each table lives (hash-
distributed on a column, reference table copied to every node, or local to the coordinator,
from pg_dist_partition), and writes, in the output folder:

  schema.mmd  Mermaid ``erDiagram`` source (deterministic: same schema, same bytes)
  schema.svg  the diagram, laid out and drawn here in plain Python: the star (the fact table in
              the centre, its dimensions around it) above the load bookkeeping tables

    python erd.py [--database-url URL] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path
from xml.sax.saxutils import escape

import cli
import db
import sql_queries as sql

# ================================================================ the catalog

COLUMNS_QUERY = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM unnest(%(tables)s::text[]) WITH ORDINALITY AS t (name, ord)
JOIN pg_class c ON c.oid = to_regclass(t.name)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY t.ord, a.attnum"""

# Primary keys, unique constraints and foreign keys, columns in key order.
CONSTRAINTS_QUERY = """
SELECT rel.relname, con.contype,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k (num, i)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
             ORDER BY k.i),
       ref.relname,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k (num, i)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
             ORDER BY k.i)
FROM pg_constraint con
JOIN pg_class rel ON rel.oid = con.conrelid
LEFT JOIN pg_class ref ON ref.oid = con.confrelid
WHERE con.conrelid = ANY (SELECT to_regclass(t) FROM unnest(%(tables)s::text[]) AS t)
  AND con.contype IN ('p', 'u', 'f')"""

# On Citus: how each of the tables is placed (tables not in pg_dist_partition stay local).
PLACEMENT_QUERY = """
SELECT t.name,
       CASE WHEN p.partmethod = 'h'
            THEN 'distributed on ' || column_to_column_name(p.logicalrelid, p.partkey)
            WHEN p.repmodel = 't' THEN 'reference table'
            ELSE 'local to the coordinator' END
FROM unnest(%(tables)s::text[]) AS t (name)
LEFT JOIN pg_dist_partition p ON p.logicalrelid = to_regclass(t.name)"""

# Short, one-word names (Mermaid types cannot hold spaces).
TYPE_NAMES = {
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time with time zone": "timetz",
    "time without time zone": "time",
    "double precision": "float8",
    "character varying": "varchar",
    "bit varying": "varbit",
}


def short_type(name: str) -> str:
    for long, short in TYPE_NAMES.items():
        if name.startswith(long):
            name = short + name[len(long) :]
    return name.replace(" ", "_")


@dataclasses.dataclass
class Column:
    name: str
    type: str
    not_null: bool
    pk: bool = False
    fk: bool = False
    uk: bool = False

    @property
    def keys(self) -> list[str]:
        return [k for k, on in (("PK", self.pk), ("FK", self.fk), ("UK", self.uk)) if on]


@dataclasses.dataclass
class ForeignKey:
    table: str
    columns: list[str]
    parent: str
    parent_columns: list[str]


@dataclasses.dataclass
class Table:
    name: str
    columns: list[Column]
    foreign_keys: list[ForeignKey] = dataclasses.field(default_factory=list)
    composite_uniques: list[list[str]] = dataclasses.field(default_factory=list)
    placement: str | None = None  # on Citus only, e.g. "distributed on user_id"

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def row(self, name: str) -> int:
        return next(i for i, c in enumerate(self.columns) if c.name == name)


@dataclasses.dataclass
class Schema:
    tables: dict[str, Table]  # in sql_queries.TABLES order

    @property
    def foreign_keys(self) -> list[ForeignKey]:
        return [fk for t in self.tables.values() for fk in t.foreign_keys]

    def optional(self, fk: ForeignKey) -> bool:
        table = self.tables[fk.table]
        return any(not table.column(c).not_null for c in fk.columns)


def read_schema(conn, tables: list[str]) -> Schema:
    with db.managed_cursor(conn) as cur:
        cur.execute(sql.missing_tables, {"tables": tables})
        missing = [row[0] for row in cur.fetchall()]
        if missing:
            raise db.DatabaseError(
                f"table(s) {', '.join(missing)} missing: run `python create_tables.py` first"
            )
        cur.execute(COLUMNS_QUERY, {"tables": tables})
        columns = cur.fetchall()
        cur.execute(CONSTRAINTS_QUERY, {"tables": tables})
        constraints = cur.fetchall()
        cur.execute(sql.citus_present)
        placements = {}
        if cur.fetchone()[0]:
            cur.execute(PLACEMENT_QUERY, {"tables": tables})
            placements = dict(cur.fetchall())
    schema = Schema({name: Table(name, [], placement=placements.get(name)) for name in tables})
    for table, name, type_, not_null in columns:
        schema.tables[table].columns.append(Column(name, short_type(type_), not_null))

    # Deterministic whatever order the catalog returns: by kind, then by column position.
    def position(row):
        table = schema.tables[row[0]]
        return (tables.index(row[0]), "pfu".index(row[1]), [table.row(c) for c in row[2]])

    for table, kind, cols, parent, parent_cols in sorted(constraints, key=position):
        t = schema.tables[table]
        if kind == "p":
            for c in cols:
                t.column(c).pk = True
        elif kind == "u":
            if len(cols) == 1:
                t.column(cols[0]).uk = True
            else:
                t.composite_uniques.append(list(cols))
        elif parent in schema.tables:  # references outside the project's tables are left out
            for c in cols:
                t.column(c).fk = True
            t.foreign_keys.append(ForeignKey(table, list(cols), parent, list(parent_cols)))
    return schema


# ================================================================ Mermaid


def mermaid(schema: Schema) -> str:
    lines = [
        "%% The Sparkify tables as PostgreSQL reports them. Generated by erd.py from the",
        "%% database catalog: do not edit; run `python erd.py` after changing the schema.",
        "erDiagram",
    ]
    for table in schema.tables.values():
        if table.placement:
            lines.append(f"    %% {table.name} on Citus: {table.placement}")
        lines.append(f"    {table.name} {{")
        for col in table.columns:
            notes = [] if col.not_null or col.pk else ["nullable"]
            notes += [f"unique ({', '.join(u)})" for u in table.composite_uniques if col.name in u]
            keys = ", ".join(col.keys)
            lines.append(
                f"        {col.type} {col.name}"
                + (f" {keys}" if keys else "")
                + (f' "{"; ".join(notes)}"' if notes else "")
            )
        lines.append("    }")
    for fk in schema.foreign_keys:
        one = "|o" if schema.optional(fk) else "||"
        lines.append(f'    {fk.parent} {one}--o{{ {fk.table} : "{", ".join(fk.columns)}"')
    return "\n".join(lines) + "\n"


# ================================================================ layout

FONT = 12.5  # px, table rows (monospace)
CHAR = FONT * 0.62  # generous width of one monospace character
ROW = 22
HEADER = 34
FOOTER = 20
PAD = 12
BADGE = 30  # room for PK/FK/UK before the column name
TYPE_GAP = 18
GAP_X = 110  # between columns of tables: room for two lanes and the end markers
GAP_Y = 34  # between tables stacked in a column
STUB = 26  # straight part of a line next to a table (end markers sit on it)
LANE = 14  # between parallel vertical segments
MARGIN = 28
PANEL_PAD = 22
TITLE_HEIGHT = 78


@dataclasses.dataclass
class Box:
    table: Table
    role: str  # fact, dimension, bookkeeping
    column: int  # 0 left, 1 centre, 2 right (bookkeeping may go further)
    x: float = 0.0
    y: float = 0.0
    width: float = 0.0

    @property
    def height(self) -> float:
        return HEADER + ROW * len(self.table.columns) + FOOTER * len(self.table.composite_uniques)

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def bottom(self) -> float:
        return self.y + self.height

    def row_y(self, column: str) -> float:
        return self.y + HEADER + ROW * self.table.row(column) + ROW / 2


def natural_width(table: Table) -> float:
    names = max(len(c.name) for c in table.columns)
    types = max(len(c.type) + (0 if c.not_null or c.pk else 1) for c in table.columns)
    rows = PAD + BADGE + (names + types) * CHAR + TYPE_GAP + PAD
    tag = max(100, len(box_tag("bookkeeping", table)) * CHAR * 0.8)  # the longest role
    header = PAD + len(table.name) * FONT * 1.15 * 0.62 + tag + PAD  # name + role tag
    footers = max(
        (PAD * 2 + len(footer_text(u)) * CHAR * 0.9 for u in table.composite_uniques), default=0
    )
    return max(rows, header, footers, 200)


def box_tag(role: str, table: Table) -> str:
    """What a box's header says of its table: its role, and on Citus its placement."""
    return f"{role} · {table.placement}" if table.placement else role


def footer_text(columns: list[str]) -> str:
    return f"unique ({', '.join(columns)})"


def fact_table(schema: Schema, star: list[str]) -> str:
    def links(name: str) -> int:
        return sum(
            fk.parent in star and fk.parent != name for fk in schema.tables[name].foreign_keys
        )

    return max(star, key=lambda name: (links(name), -star.index(name)))


def place(schema: Schema, star_names: list[str]) -> list[Box]:
    star = [t for t in star_names if t in schema.tables]
    fact = fact_table(schema, star)
    fact_def = schema.tables[fact]
    dims = [t for t in star if t != fact]
    # Dimensions in the order the fact table's foreign keys name them, so lines do not cross.
    order = {}
    for fk in fact_def.foreign_keys:
        if fk.parent in dims:
            order.setdefault(fk.parent, fact_def.row(fk.columns[0]))
    for i, name in enumerate(dims):
        order.setdefault(name, 1000 + i)
    # Dimensions that reference one another stay together, one above the other.
    group = {name: name for name in dims}

    def root(name):
        while group[name] != name:
            name = group[name]
        return name

    for fk in schema.foreign_keys:
        if fk.table in dims and fk.parent in dims:
            a, b = sorted((root(fk.table), root(fk.parent)), key=order.get)
            group[b] = a
    components: dict[str, list[str]] = {}
    for name in sorted(dims, key=order.get):
        components.setdefault(root(name), []).append(name)
    # In that order, groups fill the left column while it stays within about half of all the
    # rows; the rest go right.
    size = {name: len(schema.tables[name].columns) + 2 for name in dims}
    total = sum(size.values())
    columns: tuple[list[str], list[str]] = ([], [])
    left, side = 0, 0
    for members in components.values():
        rows = sum(size[m] for m in members)
        if side == 0 and columns[0] and left + rows / 2 > total / 2:
            side = 1
        columns[side].extend(members)
        left += rows if side == 0 else 0

    boxes = {fact: Box(fact_def, "fact", 1)}
    for side, names in zip((0, 2), columns):
        for name in names:
            boxes[name] = Box(schema.tables[name], "dimension", side)

    # Bookkeeping: the tables the star references sit at the right, their relatives leftwards.
    ops = [t for t in schema.tables if t not in star]
    referenced = [
        t for t in ops if any(fk.parent == t for s in star for fk in schema.tables[s].foreign_keys)
    ]
    ordered: list[str] = []
    queue = list(referenced)
    while queue or len(ordered) < len(ops):
        if not queue:
            queue.append(next(t for t in ops if t not in ordered))
        name = queue.pop(0)
        if name in ordered:
            continue
        ordered.append(name)
        for fk in schema.foreign_keys:
            for a, b in ((fk.table, fk.parent), (fk.parent, fk.table)):
                if a == name and b in ops and b not in ordered:
                    queue.append(b)
    for i, name in enumerate(ordered):
        boxes[name] = Box(schema.tables[name], "bookkeeping", 2 - i)

    # Widths: one per column of boxes.
    width: dict[int, float] = {}
    for box in boxes.values():
        width[box.column] = max(width.get(box.column, 0), natural_width(box.table))
    first = min(width)
    x = MARGIN + PANEL_PAD
    left_of: dict[int, float] = {}
    for col in range(first, max(width) + 1):
        left_of[col] = x
        x += width.get(col, 0) + GAP_X
    for box in boxes.values():
        box.x, box.width = left_of[box.column], width[box.column]

    # Heights: each dimension as close as possible to the row of the fact that references it.
    top = MARGIN + TITLE_HEIGHT + PANEL_PAD + 16
    fact_box = boxes[fact]
    fact_box.y = top
    for names in columns:
        below = top
        for name in names:
            box = boxes[name]
            wanted = below
            for fk in fact_def.foreign_keys:
                if fk.parent == name:
                    wanted = fact_box.row_y(fk.columns[0]) - (
                        box.row_y(fk.parent_columns[0]) - box.y
                    )
                    break
            box.y = max(below, wanted)
            below = box.bottom + GAP_Y
    star_bottom = max(boxes[name].bottom for name in star)

    # Bookkeeping row: each table level with its neighbour on the right where a key joins them.
    if ordered:
        ops_top = star_bottom + PANEL_PAD * 2 + 16 + 16
        offsets = {ordered[0]: 0.0}
        for right, left in itertools.pairwise(ordered):
            offsets[left] = offsets[right]
            for fk in schema.foreign_keys:
                if {fk.table, fk.parent} == {left, right}:
                    # level when parent.y = child.y + delta * ROW
                    delta = schema.tables[fk.table].row(fk.columns[0]) - schema.tables[
                        fk.parent
                    ].row(fk.parent_columns[0])
                    offsets[left] = offsets[right] + (delta if left == fk.parent else -delta) * ROW
                    break
        lowest = min(offsets.values())
        for name in ordered:
            boxes[name].y = ops_top + offsets[name] - lowest
    return list(boxes.values())


# ================================================================ lines


@dataclasses.dataclass
class Link:
    """A foreign key's line: from the referencing row of the child to the key row of the
    parent, straight when they are level, else out to a vertical lane and back in."""

    fk: ForeignKey
    optional: bool
    start: tuple[float, float]  # on the child's side
    end: tuple[float, float]  # on the parent's side
    channel: tuple  # where its vertical segment runs
    points: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    @property
    def leaving(self) -> int:
        """+1 when the line leaves the child to the right, -1 to the left."""
        if self.channel[0] == "outside":
            return self.channel[2]
        return 1 if self.start[0] == self.channel[1] else -1


def route(schema: Schema, boxes: list[Box]) -> list[Link]:
    by_name = {b.table.name: b for b in boxes}
    links = []
    for fk in schema.foreign_keys:
        c, p = by_name[fk.table], by_name[fk.parent]
        yc, yp = c.row_y(fk.columns[0]), p.row_y(fk.parent_columns[0])
        if c.right <= p.x:  # side by side: the sides that face each other
            start, end, channel = (c.right, yc), (p.x, yp), ("between", c.right, p.x)
        elif p.right <= c.x:
            start, end, channel = (c.x, yc), (p.right, yp), ("between", p.right, c.x)
        elif c.column <= 0:  # one above the other: a bracket on the outer side
            start, end, channel = (c.x, yc), (p.x, yp), ("outside", c.column, -1)
        else:
            start, end, channel = (c.right, yc), (p.right, yp), ("outside", c.column, 1)
        links.append(Link(fk, schema.optional(fk), start, end, channel))
    # One vertical lane per line in each channel. Lines sorted by where they start, the earlier
    # ones further from the child's side: lines whose spans overlap then do not cross.
    channels: dict[tuple, list[Link]] = {}
    for link in links:
        if link.channel[0] == "outside" or abs(link.start[1] - link.end[1]) > 0.5:
            channels.setdefault(link.channel, []).append(link)
    lanes: dict[int, float] = {}
    for channel, members in channels.items():
        members.sort(key=lambda m: (m.start[1], m.end[1]))
        for i, link in enumerate(members):
            if channel[0] == "between":
                offset = (i - (len(members) - 1) / 2) * LANE
                downwards = 1 if link.end[1] > link.start[1] else -1
                lanes[id(link)] = (channel[1] + channel[2]) / 2 - link.leaving * downwards * offset
            else:
                lanes[id(link)] = link.start[0] + link.leaving * (STUB + 10 + i * LANE)
    for link in links:
        if id(link) in lanes:
            lane = lanes[id(link)]
            link.points = [link.start, (lane, link.start[1]), (lane, link.end[1]), link.end]
        else:
            link.points = [link.start, link.end]
    return links


def path_data(points: list[tuple[float, float]], radius: float = 7.0) -> str:
    """An orthogonal polyline with rounded corners."""
    out = [f"M {points[0][0]:.1f} {points[0][1]:.1f}"]
    for (x0, y0), (x1, y1), (x2, y2) in zip(points, points[1:], points[2:]):
        r = min(radius, abs(x1 - x0 + y1 - y0) / 2, abs(x2 - x1 + y2 - y1) / 2)
        ax = x1 - r * ((x1 > x0) - (x1 < x0))
        ay = y1 - r * ((y1 > y0) - (y1 < y0))
        bx = x1 + r * ((x2 > x1) - (x2 < x1))
        by = y1 + r * ((y2 > y1) - (y2 < y1))
        out.append(f"L {ax:.1f} {ay:.1f} Q {x1:.1f} {y1:.1f} {bx:.1f} {by:.1f}")
    out.append(f"L {points[-1][0]:.1f} {points[-1][1]:.1f}")
    return " ".join(out)


def end_marks(x: float, y: float, direction: int, many: bool, optional: bool) -> list[str]:
    """Crow's-foot notation at a line's end on a table's side; direction points away from it."""
    out = []
    if many:  # zero or many: a crow's foot on the table, a circle beyond it
        tip = x + direction * 12
        out.append(
            f'<path class="mark" d="M {tip:.1f} {y:.1f} L {x:.1f} {y - 6:.1f} '
            f"M {tip:.1f} {y:.1f} L {x:.1f} {y:.1f} M {tip:.1f} {y:.1f} "
            f'L {x:.1f} {y + 6:.1f}"/>'
        )
        out.append(f'<circle class="ring" cx="{x + direction * 18:.1f}" cy="{y:.1f}" r="4"/>')
    else:  # exactly one (||) or zero or one (o|)
        bar = x + direction * 8
        out.append(f'<path class="mark" d="M {bar:.1f} {y - 6:.1f} L {bar:.1f} {y + 6:.1f}"/>')
        if optional:
            out.append(f'<circle class="ring" cx="{x + direction * 17:.1f}" cy="{y:.1f}" r="4"/>')
        else:
            bar2 = x + direction * 13
            out.append(
                f'<path class="mark" d="M {bar2:.1f} {y - 6:.1f} L {bar2:.1f} {y + 6:.1f}"/>'
            )
    return out


# ================================================================ SVG

COLOURS = {  # header fill, header text, tag text, body stroke
    "fact": ("#1d3f72", "#ffffff", "#bcd0ee", "#1d3f72"),
    "dimension": ("#3a78c2", "#ffffff", "#dbe8f8", "#3a78c2"),
    "bookkeeping": ("#6b7280", "#ffffff", "#e5e7eb", "#6b7280"),
}
STYLE = """
text { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, 'DejaVu Sans', sans-serif; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono',
        'Liberation Mono', monospace; font-size: 12.5px; }
.title { font-size: 20px; font-weight: 700; fill: #111827; }
.subtitle { font-size: 12.5px; fill: #6b7280; }
.panel-label { font-size: 12px; font-weight: 700; letter-spacing: 0.08em; fill: #6b7280; }
.name { fill: #111827; }
.type { fill: #6b7280; }
.key-pk { fill: #b45309; font-weight: 700; font-size: 10.5px; }
.key-fk { fill: #2563eb; font-weight: 700; font-size: 10.5px; }
.key-uk { fill: #7c3aed; font-weight: 700; font-size: 10.5px; }
.footer { fill: #6b7280; font-size: 11px; font-style: italic; }
.table-name { font-size: 15px; font-weight: 700; }
.tag { font-size: 11px; font-style: italic; }
.line { fill: none; stroke: #475569; stroke-width: 1.5; }
.mark { fill: none; stroke: #475569; stroke-width: 1.5; }
.ring { fill: #ffffff; stroke: #475569; stroke-width: 1.5; }
.legend { font-size: 11.5px; fill: #374151; }
"""


CITUS_NOTE = " (on Citus, with where each table lives)"


def svg(schema: Schema, star: list[str]) -> str:
    citus = any(t.placement for t in schema.tables.values())
    boxes = place(schema, star)
    links = route(schema, boxes)
    star_boxes = [b for b in boxes if b.role != "bookkeeping"]
    ops_boxes = [b for b in boxes if b.role == "bookkeeping"]
    lanes = [x for link in links for x, _ in link.points]
    right = max([b.right for b in boxes] + lanes) + PANEL_PAD + MARGIN
    width = max(right, 760)
    bottom = max(b.bottom for b in boxes) + PANEL_PAD + MARGIN
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{bottom:.0f}" viewBox="0 0 {width:.0f} {bottom:.0f}" role="img" '
            f'aria-label="Entity-relationship diagram of the Sparkify tables">'
        ),
        f"<style>{STYLE}</style>",
        f'<rect x="0" y="0" width="{width:.0f}" height="{bottom:.0f}" rx="10" fill="#ffffff"/>',
        (
            f'<text class="title" x="{MARGIN}" y="{MARGIN + 20}">Sparkify: the star schema '
            f"and its load bookkeeping</text>"
        ),
        (
            f'<text class="subtitle" x="{MARGIN}" y="{MARGIN + 42}">PostgreSQL tables as the '
            f"database catalog describes them{CITUS_NOTE if citus else ''}; drawn by erd.py"
            "</text>"
        ),
    ]
    out += legend(width - MARGIN, MARGIN + 8)

    # Both panels span the same width: the boxes and every vertical segment of a line.
    panel_x0 = min(b.x for b in boxes) - PANEL_PAD
    panel_x1 = max([b.right for b in boxes] + lanes) + PANEL_PAD

    def panel(members: list[Box], label: str, fill: str, stroke: str, dash: str) -> None:
        y0 = min(b.y for b in members) - PANEL_PAD - 16
        y1 = max(b.bottom for b in members) + PANEL_PAD
        out.append(
            f'<rect x="{panel_x0:.1f}" y="{y0:.1f}" width="{panel_x1 - panel_x0:.1f}" '
            f'height="{y1 - y0:.1f}" rx="12" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="1.2"{dash}/>'
        )
        out.append(
            f'<text class="panel-label" x="{panel_x0 + 14:.1f}" y="{y0 + 20:.1f}">'
            f"{escape(label)}</text>"
        )

    panel(star_boxes, "STAR SCHEMA", "#f3f7fd", "#c7d7ee", "")
    if ops_boxes:
        panel(ops_boxes, "LOAD BOOKKEEPING", "#f7f7f8", "#c4c7cc", ' stroke-dasharray="6 4"')
    for link in links:
        out.append(f'<path class="line" d="{path_data(link.points)}"/>')
    for box in boxes:
        out += draw_box(box)
    for link in links:
        (x0, y0), (x1, _) = link.points[0], link.points[1]
        out += end_marks(x0, y0, 1 if x1 > x0 else -1, many=True, optional=True)
        (x0, y0), (x1, _) = link.points[-1], link.points[-2]
        out += end_marks(x0, y0, 1 if x1 > x0 else -1, many=False, optional=link.optional)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def draw_box(box: Box) -> list[str]:
    fill, text, tag, stroke = COLOURS[box.role]
    x, y, w = box.x, box.y, box.width
    out = [
        f'<g id="table-{escape(box.table.name)}">',
        (
            f'<rect x="{x + 2:.1f}" y="{y + 3:.1f}" width="{w:.1f}" height="{box.height:.1f}" '
            f'rx="7" fill="#0f172a" opacity="0.08"/>'
        ),
        (
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{box.height:.1f}" rx="7" '
            f'fill="#ffffff"/>'
        ),
        (
            f'<path d="M {x:.1f} {y + HEADER:.1f} L {x:.1f} {y + 7:.1f} Q {x:.1f} {y:.1f} '
            f"{x + 7:.1f} {y:.1f} L {x + w - 7:.1f} {y:.1f} Q {x + w:.1f} {y:.1f} "
            f'{x + w:.1f} {y + 7:.1f} L {x + w:.1f} {y + HEADER:.1f} Z" fill="{fill}"/>'
        ),
        (
            f'<text class="table-name" x="{x + PAD:.1f}" y="{y + 22:.1f}" fill="{text}">'
            f"{escape(box.table.name)}</text>"
        ),
        (
            f'<text class="tag" x="{x + w - PAD:.1f}" y="{y + 22:.1f}" fill="{tag}" '
            f'text-anchor="end">{escape(box_tag(box.role, box.table))}</text>'
        ),
    ]
    for i, col in enumerate(box.table.columns):
        top = y + HEADER + i * ROW
        if i % 2 and top + ROW < box.bottom - 0.5:
            out.append(
                f'<rect x="{x + 1:.1f}" y="{top:.1f}" width="{w - 2:.1f}" '
                f'height="{ROW}" fill="#f5f7fa"/>'
            )
        elif i % 2:  # the last row: its stripe follows the rounded corners
            b, r = box.bottom - 1, 6
            out.append(
                f'<path d="M {x + 1:.1f} {top:.1f} L {x + w - 1:.1f} {top:.1f} '
                f"L {x + w - 1:.1f} {b - r:.1f} Q {x + w - 1:.1f} {b:.1f} "
                f"{x + w - 1 - r:.1f} {b:.1f} L {x + 1 + r:.1f} {b:.1f} "
                f'Q {x + 1:.1f} {b:.1f} {x + 1:.1f} {b - r:.1f} Z" fill="#f5f7fa"/>'
            )
        base = top + ROW / 2 + 4.3
        keys = col.keys
        if keys:
            # A column with two kinds of key shows both initials (P·F).
            label = keys[0] if len(keys) == 1 else "·".join(k[0] for k in keys)
            out.append(
                f'<text class="key-{keys[0].lower()}" x="{x + PAD:.1f}" '
                f'y="{base:.1f}">{label}</text>'
            )
        weight = ' font-weight="700"' if col.pk else ""
        out.append(
            f'<text class="mono name" x="{x + PAD + BADGE:.1f}" y="{base:.1f}"{weight}>'
            f"{escape(col.name)}</text>"
        )
        nullable = "" if col.not_null or col.pk else "?"
        out.append(
            f'<text class="mono type" x="{x + w - PAD:.1f}" y="{base:.1f}" '
            f'text-anchor="end">{escape(col.type)}{nullable}</text>'
        )
    for j, unique in enumerate(box.table.composite_uniques):
        top = y + HEADER + len(box.table.columns) * ROW + j * FOOTER
        out.append(
            f'<line x1="{x + 1:.1f}" y1="{top:.1f}" x2="{x + w - 1:.1f}" y2="{top:.1f}" '
            f'stroke="#e5e7eb"/>'
        )
        out.append(
            f'<text class="footer" x="{x + PAD:.1f}" y="{top + 14:.1f}">'
            f"{escape(footer_text(unique))}</text>"
        )
    out.append(
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{box.height:.1f}" '
        f'rx="7" fill="none" stroke="{stroke}" stroke-width="1.4"/>'
    )
    out.append("</g>")
    return out


def legend(right: float, top: float) -> list[str]:
    """Key to the marks, right-aligned at the top."""
    x = right - 430
    y = top + 10
    out = []
    for dx, key, text in (
        (0, "pk", "primary key"),
        (112, "fk", "foreign key"),
        (224, "uk", "unique"),
    ):
        out.append(f'<text class="key-{key}" x="{x + dx:.1f}" y="{y:.1f}">{key.upper()}</text>')
        out.append(f'<text class="legend" x="{x + dx + 22:.1f}" y="{y:.1f}">{text}</text>')
    out.append(f'<text class="mono type" x="{x + 310:.1f}" y="{y:.1f}">type?</text>')
    out.append(f'<text class="legend" x="{x + 356:.1f}" y="{y:.1f}">nullable</text>')
    y += 24
    # one --- many sample line
    x1, x2 = x + 6, x + 90
    out.append(f'<path class="line" d="M {x1:.1f} {y - 4:.1f} L {x2:.1f} {y - 4:.1f}"/>')
    out += end_marks(x2, y - 4, -1, many=True, optional=True)
    out += end_marks(x1, y - 4, 1, many=False, optional=False)
    out.append(
        f'<text class="legend" x="{x2 + 10:.1f}" y="{y:.1f}">exactly one parent row, '
        f"zero or many child rows</text>"
    )
    y += 20
    out.append(f'<path class="line" d="M {x1:.1f} {y - 4:.1f} L {x2:.1f} {y - 4:.1f}"/>')
    out += end_marks(x2, y - 4, -1, many=True, optional=True)
    out += end_marks(x1, y - 4, 1, many=False, optional=True)
    out.append(
        f'<text class="legend" x="{x2 + 10:.1f}" y="{y:.1f}">zero or one parent row: '
        f"the key may be NULL</text>"
    )
    return out


# ================================================================ the command


def write(settings: db.Settings, out_dir: Path) -> tuple[Path, Path, Schema]:
    conn = db.connect(settings)
    try:
        schema = read_schema(conn, sql.TABLES)
    finally:
        conn.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    mmd, image = out_dir / "schema.mmd", out_dir / "schema.svg"
    mmd.write_text(mermaid(schema), encoding="utf-8", newline="\n")
    image.write_text(svg(schema, sql.STAR_TABLES), encoding="utf-8", newline="\n")
    return mmd, image, schema


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        description="Write the entity-relationship diagram of the Sparkify tables, read from "
        "the live database catalog: DIR/schema.mmd (Mermaid erDiagram source) and "
        "DIR/schema.svg (drawn here, no external tools).",
        epilog="example (the diagram of the tables create_tables.py made, into /tmp/erd):\n"
        "  python erd.py --out /tmp/erd\n\n"
        "exit codes: 0 written; 2 bad arguments; 3 database problem (tables missing: "
        "run `python create_tables.py` first)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (default: $DATABASE_URL, then "
        "PG* variables, then the embedded server)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("ERD"), metavar="DIR", help="output folder (default: ERD)"
    )
    args = parser.parse_args(argv)
    settings = db.Settings.from_env(args.database_url)
    return db.run_command(settings, lambda: report(settings, args.out))


def report(settings: db.Settings, out_dir: Path) -> int:
    try:
        mmd, image, schema = write(settings, out_dir)
    except OSError as exc:
        raise cli.UserError(f"cannot write to {out_dir}: {exc.strerror}") from None
    print(
        f"wrote {mmd} and {image}: {len(schema.tables)} tables, "
        f"{len(schema.foreign_keys)} foreign keys, from {settings.describe()}"
    )
    for table in schema.tables.values():
        if table.placement:
            print(f"  {table.name}: {table.placement}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
