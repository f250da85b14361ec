"""OData query options of SensorThings 1.1 parsed into a tree (recursive descent), before any SQL is made.

`$filter` and `$orderby` become expression nodes; `$expand` becomes a list of items carrying their own
options. A syntax error raises `ODataSyntaxError` with the 0-based position where the parser stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal as TypingLiteral

from territoire_data.errors import BadRequestError
from territoire_data.querylimits import QueryLimits, current_limits


class ODataSyntaxError(BadRequestError):
    """A query option that does not parse; says which option and where."""

    title = "Invalid query option"
    type_slug = "sta-query-syntax"

    def __init__(self, option: str, message: str, position: int, text: str) -> None:
        pointer = text[:position] + " ⟶ " + text[position:] if text else ""
        super().__init__(
            f"{option}: {message} at position {position}" + (f": {pointer}" if pointer else ""),
            option=option,
            position=position,
        )
        self.message = message
        self.position = position


# --- expression tree ----------------------------------------------------------------------------------

LiteralKind = TypingLiteral["string", "number", "boolean", "null", "datetime", "duration", "geometry"]


@dataclass(frozen=True)
class Lit:
    """A literal value; geometry literals hold WKT, durations an ISO 8601 duration string."""

    kind: LiteralKind
    value: str | float | int | bool | datetime | None


@dataclass(frozen=True)
class Path:
    """A property path such as `name`, `Datastream/Thing/name` or `properties/owner`."""

    segments: tuple[str, ...]


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Binary:
    op: str  # eq ne gt ge lt le and or add sub mul div mod
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Unary:
    op: str  # not
    operand: Expr


Expr = Lit | Path | Call | Binary | Unary

COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
ARITHMETIC = frozenset({"add", "sub", "mul", "div", "mod"})

# Function name -> accepted argument counts (section 9.3.3.5 of the standard).
FUNCTIONS: dict[str, tuple[int, ...]] = {
    "substringof": (2,),
    "startswith": (2,),
    "endswith": (2,),
    "length": (1,),
    "indexof": (2,),
    "substring": (2, 3),
    "tolower": (1,),
    "toupper": (1,),
    "trim": (1,),
    "concat": (2,),
    "year": (1,),
    "month": (1,),
    "day": (1,),
    "hour": (1,),
    "minute": (1,),
    "second": (1,),
    "fractionalseconds": (1,),
    "date": (1,),
    "time": (1,),
    "totaloffsetminutes": (1,),
    "now": (0,),
    "mindatetime": (0,),
    "maxdatetime": (0,),
    "round": (1,),
    "floor": (1,),
    "ceiling": (1,),
    "geo.intersects": (2,),
    "geo.distance": (2,),
    "geo.length": (1,),
    "st_equals": (2,),
    "st_disjoint": (2,),
    "st_touches": (2,),
    "st_within": (2,),
    "st_overlaps": (2,),
    "st_crosses": (2,),
    "st_intersects": (2,),
    "st_contains": (2,),
    "st_relate": (3,),
}

# The standard's wire names that stand for a property in a path: `@iot.id` is `id` (FROST and the published
# clients send both, `$filter=Datastream/@iot.id eq 12`, `$orderby=@iot.id`); the compiler maps it.
IOT_NAMES = frozenset({"@iot.id"})

# --- tokenizer ----------------------------------------------------------------------------------------

_DATETIME = r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<typed>(?:geography|geometry|duration)'(?:[^']|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<datetime>"""
    + _DATETIME
    + r""")(?![\w.:])
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![\w])
  | (?P<name>[A-Za-z_@$][A-Za-z0-9_.@$]*)
  | (?P<punct>[(),/])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(text: str, option: str = "$filter") -> list[Token]:
    """Split an expression into tokens, keeping each one's position for error messages."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos] == "'":
                raise ODataSyntaxError(option, "unterminated string", pos, text)
            raise ODataSyntaxError(option, f"unexpected character {text[pos]!r}", pos, text)
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def parse_datetime(text: str) -> datetime:
    """An ISO 8601 date-time of a literal; a date alone means midnight UTC."""
    value = text.replace("Z", "+00:00")
    if "T" not in value:
        value += "T00:00:00+00:00"
    elif not re.search(r"[+-]\d{2}:?\d{2}$", value):
        value += "+00:00"
    return datetime.fromisoformat(value)


_WKT_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class _Parser:
    def __init__(self, text: str, option: str, limits: QueryLimits | None = None) -> None:
        self.text = text
        self.option = option
        self.limits = limits = limits or current_limits()
        self.tokens = tokenize(text, option)
        self.index = 0
        self.depth = 0  # nesting of parentheses, `not` and calls: bounded, so no input exhausts the stack
        for token in self.tokens:
            if token.kind == "typed" and token.text.startswith("geo"):
                coordinates = len(_WKT_NUMBER.findall(token.text))
                limits.check(option, "filter_max_coordinates", "the number of coordinates", coordinates)
            elif token.kind in ("string", "typed"):
                limits.check(option, "filter_max_literal_length", "the length of a literal", len(token.text) - 2)

    def nest(self) -> None:
        self.depth += 1
        self.limits.check(self.option, "filter_max_depth", "the nesting depth", self.depth)

    # helpers
    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def error(self, message: str, token: Token | None = None) -> ODataSyntaxError:
        tok = token or self.current
        return ODataSyntaxError(self.option, message, tok.pos, self.text)

    def advance(self) -> Token:
        tok = self.tokens[self.index]
        self.index += 1
        return tok

    def is_word(self, *words: str) -> bool:
        return self.current.kind == "name" and self.current.text.lower() in words

    def expect_punct(self, char: str) -> Token:
        if self.current.kind == "punct" and self.current.text == char:
            return self.advance()
        found = self.current.text or "end of input"
        raise self.error(f"expected {char!r}, found {found!r}")

    def at_punct(self, char: str) -> bool:
        return self.current.kind == "punct" and self.current.text == char

    # grammar
    def parse_or(self) -> Expr:
        left = self.parse_and()
        while self.is_word("or"):
            self.advance()
            left = Binary("or", left, self.parse_and())
        return left

    def parse_and(self) -> Expr:
        left = self.parse_not()
        while self.is_word("and"):
            self.advance()
            left = Binary("and", left, self.parse_not())
        return left

    def parse_not(self) -> Expr:
        if self.is_word("not"):
            self.advance()
            self.nest()
            operand = self.parse_not()
            self.depth -= 1
            return Unary("not", operand)
        return self.parse_comparison()

    def parse_comparison(self) -> Expr:
        left = self.parse_additive()
        if self.current.kind == "name" and self.current.text.lower() in COMPARISONS:
            op = self.advance().text.lower()
            right = self.parse_additive()
            if self.current.kind == "name" and self.current.text.lower() in COMPARISONS:
                raise self.error("comparisons cannot be chained; use 'and'")
            return Binary(op, left, right)
        return left

    def parse_additive(self) -> Expr:
        left = self.parse_multiplicative()
        while self.is_word("add", "sub"):
            op = self.advance().text.lower()
            left = Binary(op, left, self.parse_multiplicative())
        return left

    def parse_multiplicative(self) -> Expr:
        left = self.parse_primary()
        while self.is_word("mul", "div", "mod"):
            op = self.advance().text.lower()
            left = Binary(op, left, self.parse_primary())
        return left

    def parse_primary(self) -> Expr:
        tok = self.current
        if tok.kind == "punct" and tok.text == "(":
            self.advance()
            self.nest()
            inner = self.parse_or()
            self.expect_punct(")")
            self.depth -= 1
            return inner
        if tok.kind == "string":
            self.advance()
            return Lit("string", tok.text[1:-1].replace("''", "'"))
        if tok.kind == "typed":
            self.advance()
            prefix, _, rest = tok.text.partition("'")
            body = rest[:-1].replace("''", "'")
            if prefix == "duration":
                if not re.fullmatch(
                    r"-?P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?", body
                ):
                    raise self.error(f"malformed duration {body!r}", tok)
                return Lit("duration", body)
            return Lit("geometry", body)
        if tok.kind == "datetime":
            self.advance()
            try:
                return Lit("datetime", parse_datetime(tok.text))
            except ValueError:
                raise self.error(f"malformed date-time {tok.text!r}", tok) from None
        if tok.kind == "number":
            self.advance()
            if re.fullmatch(r"-?\d+", tok.text):
                return Lit("number", int(tok.text))
            return Lit("number", float(tok.text))
        if tok.kind == "name":
            lowered = tok.text.lower()
            if lowered in ("true", "false"):
                self.advance()
                return Lit("boolean", lowered == "true")
            if lowered == "null":
                self.advance()
                return Lit("null", None)
            if lowered in COMPARISONS or lowered in ARITHMETIC or lowered in ("and", "or"):
                raise self.error(f"expected a value, found operator {tok.text!r}")
            self.advance()
            if self.at_punct("("):
                return self.parse_call(tok)
            return self.parse_path(tok)
        if tok.kind == "end":
            raise self.error("unexpected end of expression")
        raise self.error(f"unexpected {tok.text!r}")

    def parse_call(self, name_tok: Token) -> Call:
        name = name_tok.text.lower()
        if name not in FUNCTIONS:
            raise self.error(f"unknown function {name_tok.text!r}", name_tok)
        self.expect_punct("(")
        self.nest()
        args: list[Expr] = []
        if not self.at_punct(")"):
            args.append(self.parse_or())
            while self.at_punct(","):
                self.advance()
                args.append(self.parse_or())
        self.expect_punct(")")
        self.depth -= 1
        if len(args) not in FUNCTIONS[name]:
            expected = " or ".join(str(n) for n in FUNCTIONS[name])
            raise self.error(f"{name} takes {expected} argument(s), got {len(args)}", name_tok)
        return Call(name, tuple(args))

    def parse_path(self, first: Token) -> Path:
        if "." in first.text and first.text not in IOT_NAMES:
            raise self.error(f"unknown property {first.text!r}", first)
        segments = [first.text]
        while self.at_punct("/"):
            self.advance()
            tok = self.current
            # an index into a JSON array: `result/0`, the first value of a MultiDatastream's Observation
            if tok.kind != "name" and not (tok.kind == "number" and tok.text.isdigit()):
                raise self.error("expected a property name (or an array index) after '/'")
            self.advance()
            segments.append(tok.text)
        return Path(tuple(segments))


def parse_filter(text: str, option: str = "$filter", limits: QueryLimits | None = None) -> Expr:
    """Parse a `$filter` expression into a tree."""
    if not text.strip():
        raise ODataSyntaxError(option, "empty expression", 0, text)
    parser = _Parser(text, option, limits)
    expr = parser.parse_or()
    if parser.current.kind != "end":
        raise parser.error(f"unexpected {parser.current.text!r}")
    return expr


# --- $orderby, $select, $expand --------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderItem:
    expr: Expr
    descending: bool = False


def parse_orderby(text: str, option: str = "$orderby", limits: QueryLimits | None = None) -> tuple[OrderItem, ...]:
    """Parse `$orderby`: comma-separated expressions, each optionally followed by asc or desc."""
    parser = _Parser(text, option, limits)
    items: list[OrderItem] = []
    while True:
        parser.limits.check(option, "sort_max_keys", "the number of sort keys", len(items) + 1)
        start = parser.current
        expr = parser.parse_additive()
        if isinstance(expr, Lit):  # ORDER BY a constant orders nothing (and PostgreSQL refuses ORDER BY NULL)
            raise parser.error(f"cannot order by the constant {start.text!r}; name a property", start)
        descending = False
        if parser.is_word("asc", "desc"):
            descending = parser.advance().text.lower() == "desc"
        items.append(OrderItem(expr, descending))
        if parser.at_punct(","):
            parser.advance()
            continue
        if parser.current.kind != "end":
            raise parser.error(f"expected ',' or end, found {parser.current.text!r}")
        return tuple(items)


def parse_select(text: str, option: str = "$select") -> tuple[str, ...]:
    """Parse `$select`: comma-separated property names (paths into JSON keep their first segment)."""
    names: list[str] = []
    pos = 0
    for part in text.split(","):
        name = part.strip()
        if not re.fullmatch(r"[A-Za-z@][A-Za-z0-9_.@]*(/[A-Za-z0-9_]+)*", name):
            raise ODataSyntaxError(option, f"not a property name: {name!r}", pos, text)
        names.append(name)
        pos += len(part) + 1
    return tuple(names)


@dataclass
class QueryOptions:
    """Every query option of one request or of one `$expand` item."""

    filter: Expr | None = None
    orderby: tuple[OrderItem, ...] = ()
    select: tuple[str, ...] = ()
    expand: tuple[ExpandItem, ...] = ()
    top: int | None = None
    skip: int = 0
    count: bool | None = None
    result_format: str | None = None
    raw: dict[str, str] = field(default_factory=dict)  # the options as given, for nextLinks


@dataclass
class ExpandItem:
    """One `$expand` entry: a navigation path (`Datastreams/Observations`) and its own options."""

    path: tuple[str, ...]
    options: QueryOptions = field(default_factory=QueryOptions)


def split_top_level(text: str, separator: str, option: str) -> list[tuple[str, int]]:
    """Split on a separator outside parentheses and quotes, keeping each part's offset."""
    parts: list[tuple[str, int]] = []
    depth = 0
    in_string = False
    start = 0
    for i, char in enumerate(text):
        if char == "'":
            in_string = not in_string
        elif in_string:
            continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ODataSyntaxError(option, "unbalanced ')'", i, text)
        elif char == separator and depth == 0:
            parts.append((text[start:i], start))
            start = i + 1
    if in_string:
        raise ODataSyntaxError(option, "unterminated string", len(text), text)
    if depth:
        raise ODataSyntaxError(option, "missing ')'", len(text), text)
    parts.append((text[start:], start))
    return parts


def parse_expand(
    text: str, option: str = "$expand", limits: QueryLimits | None = None, depth: int = 0
) -> tuple[ExpandItem, ...]:
    """Parse `$expand`, with nested options in parentheses separated by ';'; `depth` is the level it is at."""
    limits = limits or current_limits()
    items: list[ExpandItem] = []
    for part, offset in split_top_level(text, ",", option):
        stripped = part.strip()
        lead = offset + len(part) - len(part.lstrip())
        paren = stripped.find("(")
        head = stripped if paren < 0 else stripped[:paren]
        if not re.fullmatch(r"[A-Za-z]+(/[A-Za-z]+)*", head):
            raise ODataSyntaxError(option, f"not a navigation path: {head!r}", lead, text)
        # Checked before the nested options are parsed: their recursion is bounded by this depth.
        limits.check(option, "sta_max_expand_depth", "the depth of $expand", depth + head.count("/") + 1)
        options = QueryOptions()
        if paren >= 0:
            if not stripped.endswith(")"):
                raise ODataSyntaxError(
                    option, "expected ')' at the end of the expand options", lead + len(stripped), text
                )
            inner = stripped[paren + 1 : -1]
            pairs: dict[str, str] = {}
            for clause, clause_offset in split_top_level(inner, ";", option):
                key, eq, value = clause.partition("=")
                if not eq:
                    raise ODataSyntaxError(
                        option, f"expected $option=value, found {clause!r}", lead + paren + 1 + clause_offset, text
                    )
                pairs[key.strip()] = value
            options = parse_options(
                pairs, prefix=f"{option}({head})/", limits=limits, _depth=depth + head.count("/") + 1
            )
        items.append(ExpandItem(tuple(head.split("/")), options))
    return tuple(items)


KNOWN_OPTIONS = frozenset({"$filter", "$orderby", "$select", "$expand", "$top", "$skip", "$count", "$resultFormat"})


def _parse_int(name: str, value: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", value):
        raise ODataSyntaxError(name, f"expected a non-negative integer, found {value!r}", 0, value)
    return int(value)


def parse_options(
    params: dict[str, str], prefix: str = "", limits: QueryLimits | None = None, _depth: int = 0
) -> QueryOptions:
    """Parse a set of query options (the request's, or the ones inside an expand item, at `_depth`)."""
    limits = limits or current_limits()
    opts = QueryOptions(raw={k: v for k, v in params.items() if k in KNOWN_OPTIONS})
    for key, value in params.items():
        name = prefix + key
        if key not in KNOWN_OPTIONS:
            if key.startswith("$"):
                raise ODataSyntaxError(name, f"unknown query option {key!r}", 0, "")
            continue
        if key == "$filter":
            opts.filter = parse_filter(value, name, limits)
        elif key == "$orderby":
            opts.orderby = parse_orderby(value, name, limits)
        elif key == "$select":
            opts.select = parse_select(value, name)
        elif key == "$expand":
            opts.expand = parse_expand(value, name, limits, _depth)
        elif key == "$top":
            opts.top = _parse_int(name, value)
        elif key == "$skip":
            opts.skip = _parse_int(name, value)
        elif key == "$count":
            if value.strip().lower() not in ("true", "false"):
                raise ODataSyntaxError(name, f"expected true or false, found {value!r}", 0, value)
            opts.count = value.strip().lower() == "true"
        elif key == "$resultFormat":
            if value != "dataArray":
                raise ODataSyntaxError(name, f"only dataArray is supported, found {value!r}", 0, value)
            opts.result_format = value
    if not _depth:
        check_request_cost(opts, limits)
    return opts


def count_nodes(expr: Expr) -> int:
    """The number of nodes of an expression tree (iterative: trees may be deep on the left)."""
    count = 0
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        count += 1
        if isinstance(node, Binary):
            stack += (node.left, node.right)
        elif isinstance(node, Unary):
            stack.append(node.operand)
        elif isinstance(node, Call):
            stack += node.args
    return count


def check_request_cost(opts: QueryOptions, limits: QueryLimits) -> None:
    """The limits on a whole request: expression nodes of every $filter and $orderby, navigations expanded."""
    nodes = 0
    expanded = 0
    stack = [opts]
    while stack:
        current = stack.pop()
        if current.filter is not None:
            nodes += count_nodes(current.filter)
        nodes += sum(count_nodes(item.expr) for item in current.orderby)
        for item in current.expand:
            expanded += len(item.path)
            stack.append(item.options)
    limits.check("$filter", "filter_max_nodes", "the number of expression nodes in the request", nodes)
    limits.check("$expand", "sta_max_expand_items", "the number of expanded navigations", expanded)
