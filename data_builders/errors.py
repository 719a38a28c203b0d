"""One error type for bad input, always naming where the problem is."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data: says which file, which line (1-based, as an editor shows it) and which field.

    ``line`` is the line of the file for text formats (CSV counts the header as line 1, so the
    first data row is line 2); for Parquet it is the 1-based row number.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
