"""The rules a penguin record must follow, as Spark column expressions, and the messages that name a broken rule.

There is one implementation of the rules: these expressions, evaluated by Spark on every record of
any size of input. Python only reads a file's header and formats the message for the first record
Spark finds wrong. Messages read `FILE: row N, column 'X': what is wrong; expected ...`.
"""

from __future__ import annotations

import unicodedata

from .config import ISLAND, LABEL, MEASUREMENTS, SPECIES

# Spellings of "no value" seen in real exports (R writes NA, pandas NaN, databases null, Excel #N/A).
MISSING = {"", "na", "n/a", "n.a.", "#n/a", "nan", "null", "none", "missing", "-", "?", "."}
UNITS = {"CulmenLength": "mm", "CulmenDepth": "mm", "FlipperLength": "mm", "BodyMass": "g"}
# No penguin measures a metre or weighs a tonne; anything larger is a unit or typing mistake, and
# values near float32's limit would turn into inf once scaled for the network.
MAX_MEASUREMENT = 1e6
# A penguin row is about 50 characters. A longer line is not a penguin CSV (or has an unclosed quote).
MAX_LINE_CHARS = 1 << 20
EXPECTED_SPECIES = f"0, 1, 2 or a species name ({', '.join(SPECIES)})"
WELL_FORMED = "expected well-formed CSV (quotes around a whole field, doubled inside it)"

NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
SPECIAL_NUMBER = r"(?i)^[+-]?(inf|infinity|nan)$"  # what float() also reads; never a possible measurement
DECIMAL_COMMA = r"^[+-]?[0-9]+,[0-9]+$"
# White space seen in exported files, and a stray byte order mark.
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2000\u2001\u2002\u2003\u2009\u3000\ufeff"
PROBLEM_TYPE = "struct<kind:string,column:string,value:string>"


def normalize_name(name: str) -> str:
    """Names match ignoring case, spaces, punctuation and accents: 'culmen_length' is CulmenLength."""
    folded = unicodedata.normalize("NFKD", name)
    return "".join(ch for ch in folded.lower() if ch.isalnum() and not unicodedata.combining(ch))


def expected_measurement(column: str) -> str:
    return f"a positive number of {UNITS[column]} below {MAX_MEASUREMENT:g}"


def short(value: str, limit: int = 40) -> str:
    """repr() of a value for an error message: quoted, escaped, and never longer than a line."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def parse_number(value: str, decimal_comma: bool = False) -> float:
    """One value typed by a person (predict's arguments), by the same patterns Spark applies to files."""
    import re

    if decimal_comma and re.match(DECIMAL_COMMA, value):
        value = value.replace(",", ".")
    if not (re.match(NUMBER, value) or re.match(SPECIAL_NUMBER, value)):
        raise ValueError(value)
    return float(value)


def check_measurement(number):
    """Whether a number (or each of a numpy array) is a possible measurement; false for NaN too."""
    return (number > 0) & (number < MAX_MEASUREMENT)


# --- the rules, as Spark expressions ------------------------------------------------------------------

def _accent_table() -> tuple[str, str]:
    """Accented Latin letters and the plain letter normalize_name folds each to, for Spark's translate()."""
    accented, plain = [], []
    for code in range(0xC0, 0x250):
        ch = chr(code).lower()
        folded = normalize_name(ch)
        if len(folded) == 1 and folded.isascii() and folded != ch and ch not in accented:
            accented.append(ch)
            plain.append(folded)
    return "".join(accented), "".join(plain)


def folded(column):
    """normalize_name in Spark: lower case, accents off, only letters and digits kept."""
    from pyspark.sql import functions as F

    accented, plain = _accent_table()
    return F.regexp_replace(F.translate(F.lower(column), accented, plain), r"[^\p{L}\p{N}]", "")


def stripped(column, also: str = ""):
    """The value without the characters of WHITESPACE (and of `also`) at either end."""
    from pyspark.sql import functions as F

    trimmed = F.btrim(column, F.lit(WHITESPACE + also))
    if also:
        return trimmed
    # Trimming by a set of characters costs Spark several times more than comparing: only a value whose first or
    # last character may be white space (a control character, a space or beyond ASCII, as every character of
    # WHITESPACE is) is trimmed. Strings compare by their UTF-8 bytes, so `< "!"` is a first byte below 0x21;
    # a last byte of 0x7f or more ends a character beyond ASCII (or is DEL).
    last = last_byte(column)
    maybe_spaced = (column < "!") | (column >= "\x7f") | (last < byte("!")) | (last >= byte("\x7f"))
    return F.when(maybe_spaced, trimmed).otherwise(column)


def last_byte(column):
    """The last byte of a string's UTF-8, as binary (empty for ""): Spark finds a string's last character by
    counting every character before it, where the last byte needs no counting."""
    from pyspark.sql import functions as F

    return F.substring(column.cast("binary"), -1, 1)


def byte(character: str):
    """An ASCII character as a one-byte binary literal, to compare with last_byte."""
    from pyspark.sql import functions as F

    return F.lit(bytearray(character.encode("ascii")))


def case_spellings(words) -> list:
    """Every upper- and lower-case spelling of ASCII words ("na": na, nA, Na, NA).

    Compared with these, a value needs no lower(): Spark's first case mapping loads ICU's tables, over a
    second of a short run. No other character lower-cases to an ASCII letter of these words."""
    import itertools

    return sorted({"".join(letters) for word in words
                   for letters in itertools.product(*[sorted({ch.lower(), ch.upper()}) for ch in word])})


MISSING_SPELLINGS = case_spellings(MISSING)


def sql_string(text: str) -> str:
    """`text` as a Spark SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_missing(column: str):
    """Whether the text in a named column is no value. One SQL expression: a Python list of hundreds of
    literals would cost a call to the JVM each, for every column of every plan."""
    from pyspark.sql import functions as F

    spellings = ", ".join(sql_string(word) for word in MISSING_SPELLINGS)
    # No spelling starts with a digit: a measurement is told apart by its first byte, without hashing it.
    return F.expr(f"`{column}` IS NULL OR ((`{column}` < '0' OR `{column}` >= ':') AND `{column}` IN ({spellings}))")


def as_number(value, decimal_comma: bool):
    """A plain decimal number (39.1, +4.5E3, and 39,1 where the file uses decimal commas); null otherwise.

    Only digits, a point, signs and exponents may make a number (so no 39_1, 0x27 or 1d, which other
    parsers take); Spark's cast then refuses anything malformed (39..1, 1e)."""
    from pyspark.sql import functions as F

    if decimal_comma:
        value = F.when(value.rlike(DECIMAL_COMMA), F.regexp_replace(value, ",", ".")).otherwise(value)
    # Spark's cast is Java's parser, which also reads hexadecimal (0x1p3), a type suffix (39.1d), NaN and
    # Infinity, and ignores control characters at either end. Of what it reads, a value that starts above
    # them, ends with a digit or a point and has no x is a plain decimal number (digits, points, signs, e):
    # byte comparisons, where looking up each character in a set costs more than the cast.
    last = last_byte(value)
    plain_decimal = ((value >= "+") & (((last >= byte("0")) & (last <= byte("9"))) | (last == byte(".")))
                     & ~value.contains("x") & ~value.contains("X"))
    special = (F.when(value.rlike("(?i)nan$"), F.lit(float("nan")))
               .when(value.startswith("-"), F.lit(float("-inf"))).otherwise(F.lit(float("inf"))))
    return F.when(plain_decimal, _try_double(value)).when(value.rlike(SPECIAL_NUMBER), special)


def _try_double(value):
    """The number a string holds, or null (a cast that cannot fail, whatever spark.sql.ansi.enabled says)."""
    from pyspark.sql import Column

    if hasattr(Column, "try_cast"):  # PySpark 4
        return value.try_cast("double")
    return _checked_cast(value)


def _checked_cast(value):
    from pyspark.sql import functions as F

    return F.when(value.rlike(NUMBER) | value.rlike(SPECIAL_NUMBER), value.cast("double"))


def is_possible(number):
    from pyspark.sql import functions as F

    return (number > 0) & (number < MAX_MEASUREMENT) & ~F.isnan(number)


def as_species(value):
    """0/1/2 as in the lab's file, or a species name (any case or accents, or the first word of a longer
    name such as 'Adelie Penguin (Pygoscelis adeliae)'); null when it is neither."""
    from pyspark.sql import functions as F

    by_name = F.when(value.isin("0", "1", "2"), value.cast("int"))  # the lab's own spelling, checked first
    first_word = F.split(value, r"\s+").getItem(0)
    for index, name in enumerate(SPECIES):
        key = normalize_name(name)
        matches = (folded(value) == key) | (folded(first_word) == key)
        by_name = by_name.when(matches, F.lit(index))
    number = as_number(value, decimal_comma=False)
    by_number = F.when((number == F.floor(number)) & (number >= 0) & (number < len(SPECIES)), number.cast("int"))
    return by_name.otherwise(by_number)


def problem(kind: str, column=None, value=None):
    """What is wrong with a record: its kind (a key of MESSAGES), the column and the offending value."""
    from pyspark.sql import functions as F

    return F.struct(F.lit(kind).alias("kind"), F.lit(column).cast("string").alias("column"),
                    (value if value is not None else F.lit(None)).cast("string").alias("value"))


def checked(frame, keep: list, decimal_comma: bool, require_label: bool, shape="shape", typed: dict | None = None):
    """`frame` (with the stripped text of each column in `t_<column>`, and a `shape` problem or null) as
    `keep`, the parsed columns and `problem`: the first rule a record breaks, in the order of its columns.

    `typed` names measurements (or the species) that are numbers already (a Parquet number column
    `n_<column>` in `frame`, instead of text): the same rules, without turning each number into text and
    back. NaN is missing, as the text 'nan' is. Each value is parsed once, in its own step: Spark computes a
    named column once, where one large expression would repeat every parse in every check."""
    from pyspark.sql import functions as F

    typed = typed or {}
    label = f"n_{LABEL}" if LABEL in typed else f"t_{LABEL}"
    numbers = [F.col(f"n_{c}") if c in typed else as_number(F.col(f"t_{c}"), decimal_comma).alias(f"n_{c}")
               for c in MEASUREMENTS]
    if LABEL in typed:  # a number column: only an index of SPECIES is a species
        index = F.col(label)
        species = F.when((index == F.floor(index)) & (index >= 0) & (index < len(SPECIES)), index)
    elif require_label or label in frame.columns:
        # Only data is parsed: a header's 'Species' would cost a case mapping (see case_spellings) for nothing.
        species = F.when(F.col("kind") == "data", as_species(F.col(label)))
    else:
        species = F.lit(None)
    texts = [f"t_{c}" for c in [ISLAND, *MEASUREMENTS] if c not in typed] + ([label] if label in frame.columns else [])
    parsed = frame.select(*keep, shape, *texts, *numbers, species.cast("int").alias("species_index"))
    problems = [F.col(shape)]  # the first non-null of these is the record's problem
    present = {}
    for c in MEASUREMENTS:
        number = F.col(f"n_{c}")
        if c in typed:  # the text is made only for the message of a broken rule
            text, present[c] = number.cast("string"), number.isNotNull() & ~F.isnan(number)
        else:
            text = F.col(f"t_{c}")
            present[c] = ~is_missing(f"t_{c}")
        problems.append(F.when(present[c] & number.isNull(), problem("not_a_number", c, text))
                        .when(present[c] & ~is_possible(number), problem("impossible", c, text)))
    columns = [F.when(~is_missing(f"t_{ISLAND}"), F.col(f"t_{ISLAND}")).alias(ISLAND)]
    columns += [F.when(present[c], F.col(f"n_{c}")).alias(c) for c in MEASUREMENTS]
    if label in frame.columns:
        if LABEL in typed:
            present, text = F.col(label).isNotNull() & ~F.isnan(F.col(label)), F.col(label).cast("string")
        else:
            present, text = ~is_missing(label), F.col(label)
        problems.append(F.when(present & F.col("species_index").isNull(), problem("not_a_species", LABEL, text)))
        columns.append(F.when(present, F.col("species_index").cast("double")).alias(LABEL))
    else:
        columns.append(F.lit(None).cast("double").alias(LABEL))
    # Blank lines and header copies are skipped, not judged.
    judged = F.when(F.col("kind") == "data", F.coalesce(*problems))
    return parsed.select(*keep, *columns, judged.alias("problem"))


MESSAGES = {
    "long_line": lambda p: f"longer than {MAX_LINE_CHARS} characters; expected CSV rows "
                           f"(is this a CSV file, or is a quote left open?)",
    "unclosed_quote": lambda p: f"a quoted field that starts here is never closed; {WELL_FORMED}",
    "text_after_quote": lambda p: f"text after the closing quote of a field; {WELL_FORMED}",
    "too_few_fields": lambda p: (f"has {p['count']} field{'s' if p['count'] != 1 else ''}; expected "
                                 f"{p['header']} as in the header (delimiter {p['delimiter']!r})"),
    "too_many_fields": lambda p: (f"has {p['count']} fields; expected {p['header']} as in the header "
                                  f"(is a value with a {p['delimiter']!r} in it missing its quotes?)"),
    "not_a_number": lambda p: (f"{short(p['value'])} is not a number; expected "
                               f"{expected_measurement(p['column'])} (or empty if unknown)"),
    "impossible": lambda p: (f"{short(p['value'])} is not a possible measurement; expected "
                             f"{expected_measurement(p['column'])} (or empty if unknown)"),
    "not_a_species": lambda p: f"{short(p['value'])} is not a species; expected {EXPECTED_SPECIES}",
}


def message(where: str, row: int, found: dict) -> str:
    """The one line for a broken rule: `where: row N, column 'X': what; expected ...`."""
    place = f"row {row}" + (f", column {found['column']!r}" if found.get("column") else "")
    return f"{where}: {place}: {MESSAGES[found['kind']](found)}"
