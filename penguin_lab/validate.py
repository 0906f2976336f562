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
WHITESPACE = r"^[\s\u00a0\ufeff]+|[\s\u00a0\ufeff]+$"


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


def check_measurement(number: float) -> bool:
    return 0 < number < MAX_MEASUREMENT  # false for NaN too


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


def stripped(column):
    from pyspark.sql import functions as F

    return F.regexp_replace(column, WHITESPACE, "")


def is_missing(value):
    from pyspark.sql import functions as F

    return value.isNull() | F.lower(value).isin(sorted(MISSING))


def as_number(value, decimal_comma: bool):
    """A plain decimal number (39.1, +4.5E3, and 39,1 where the file uses decimal commas); null otherwise."""
    from pyspark.sql import functions as F

    if decimal_comma:
        value = F.when(value.rlike(DECIMAL_COMMA), F.regexp_replace(value, ",", ".")).otherwise(value)
    return F.when(value.rlike(NUMBER) | value.rlike(SPECIAL_NUMBER), value.cast("double"))


def is_possible(number):
    from pyspark.sql import functions as F

    return (number > 0) & (number < MAX_MEASUREMENT) & ~F.isnan(number)


def as_species(value):
    """0/1/2 as in the lab's file, or a species name (any case or accents, or the first word of a longer
    name such as 'Adelie Penguin (Pygoscelis adeliae)'); null when it is neither."""
    from pyspark.sql import functions as F

    by_name = None
    first_word = F.split(value, r"\s+").getItem(0)
    for index, name in enumerate(SPECIES):
        key = normalize_name(name)
        matches = (folded(value) == key) | (folded(first_word) == key)
        by_name = F.when(matches, F.lit(index)) if by_name is None else by_name.when(matches, F.lit(index))
    number = as_number(value, decimal_comma=False)
    by_number = F.when((number == F.floor(number)) & (number >= 0) & (number < len(SPECIES)), number.cast("int"))
    return by_name.otherwise(by_number)


def problem(kind: str, column=None, value=None):
    """What is wrong with a record: its kind (a key of MESSAGES), the column and the offending value."""
    from pyspark.sql import functions as F

    return F.struct(F.lit(kind).alias("kind"), F.lit(column).cast("string").alias("column"),
                    (value if value is not None else F.lit(None)).cast("string").alias("value"))


def value_checks(fields: dict, decimal_comma: bool, require_label: bool):
    """(parsed columns, the first problem or null) for a record's stripped text values by column name.

    The checks run in the order of the columns, as a reader would find them."""
    from pyspark.sql import functions as F

    parsed = {ISLAND: F.when(~is_missing(fields[ISLAND]), fields[ISLAND])}
    found = None

    def first(condition, what):
        nonlocal found
        found = F.when(condition, what) if found is None else found.when(condition, what)

    for column in MEASUREMENTS:
        value = fields[column]
        number = as_number(value, decimal_comma)
        present = ~is_missing(value)
        first(present & number.isNull(), problem("not_a_number", column, value))
        first(present & ~is_possible(number), problem("impossible", column, value))
        parsed[column] = F.when(present, number)
    label = fields.get(LABEL)
    if label is None:
        parsed[LABEL] = F.lit(None).cast("double")
    else:
        species = as_species(label)
        present = ~is_missing(label)
        first(present & species.isNull(), problem("not_a_species", LABEL, label))
        parsed[LABEL] = F.when(present, species.cast("double"))
    return parsed, found


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
