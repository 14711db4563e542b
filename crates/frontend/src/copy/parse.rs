//! `COPY … FROM STDIN` data, parsed incrementally.
//!
//! CopyData messages cut the data anywhere, even inside a record or an
//! escape sequence, so the parser keeps the unfinished tail of the input and
//! the scanning state at its end. A record is complete at an unescaped (text)
//! or unquoted (CSV) newline; only then are its fields split and unescaped,
//! which keeps both steps simple and the scan linear in the input.

use super::{sqlstate, CopyFormat, CopyOptions, Error};

/// One data row: each field unescaped, `None` for NULL.
pub(crate) type Row = Vec<Option<String>>;

pub(crate) struct CopyParser {
    options: CopyOptions,
    table: String,
    columns: Vec<String>,
    /// Input not yet turned into rows; starts at the first unfinished record.
    buf: Vec<u8>,
    /// How far the unfinished record has been scanned, and the state there.
    scan: usize,
    in_quotes: bool,
    escaped: bool,
    /// Number of the record being read, for error messages.
    line: u64,
    skip_header: bool,
    /// The `\.` end marker was seen; everything after it is ignored.
    ended: bool,
    max_record: usize,
}

/// Where the record scan stopped.
enum Scan {
    /// A record ends at this index (the newline).
    End(usize),
    /// More input is needed.
    Incomplete,
}

impl CopyParser {
    /// `columns` are the target columns in data order; `max_record` bounds a
    /// single record so that a missing newline cannot grow memory forever.
    pub(crate) fn new(
        options: &CopyOptions,
        table: &str,
        columns: &[String],
        max_record: usize,
    ) -> Self {
        Self {
            options: options.clone(),
            table: table.to_owned(),
            columns: columns.to_vec(),
            buf: Vec::new(),
            scan: 0,
            in_quotes: false,
            escaped: false,
            line: 0,
            skip_header: options.header,
            ended: false,
            max_record,
        }
    }

    /// Adds one chunk of data and appends every row it completes to `rows`.
    /// Returns the number of input bytes those rows took.
    pub(crate) fn feed(&mut self, data: &[u8], rows: &mut Vec<Row>) -> Result<usize, Error> {
        if self.ended {
            return Ok(0);
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(data);
        let mut start = 0;
        let mut consumed = 0;
        while !self.ended {
            match self.scan_record(&buf, start, false) {
                Scan::End(end) => {
                    let record = strip_cr(&buf[start..end]);
                    if let Some(row) = self.record(record)? {
                        rows.push(row);
                    }
                    consumed += end + 1 - start;
                    start = end + 1;
                    self.scan = start;
                    self.in_quotes = false;
                    self.escaped = false;
                }
                Scan::Incomplete => break,
            }
        }
        if self.ended {
            self.scan = 0;
            return Ok(consumed);
        }
        buf.drain(..start);
        self.buf = buf;
        self.scan -= start;
        if self.buf.len() > self.max_record {
            return Err(self.error(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!("COPY record is longer than {} bytes", self.max_record),
            ));
        }
        Ok(consumed)
    }

    /// Ends the data (CopyDone): a last record without a newline still counts.
    pub(crate) fn finish(&mut self, rows: &mut Vec<Row>) -> Result<(), Error> {
        if self.ended || self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        if let Scan::End(_) = self.scan_record(&buf, 0, true) {
            // feed() leaves no complete record behind.
            return Err(self.error(
                sqlstate::INTERNAL_ERROR,
                "COPY parser left a complete record",
            ));
        }
        if self.in_quotes {
            self.line += 1;
            return Err(self.error(
                sqlstate::BAD_COPY_FILE_FORMAT,
                "unterminated CSV quoted field",
            ));
        }
        if let Some(row) = self.record(strip_cr(&buf))? {
            rows.push(row);
        }
        self.scan = 0;
        Ok(())
    }

    /// Finds the newline ending the record that begins at `start`, resuming
    /// the scan where the previous call stopped. With `at_eof`, a trailing
    /// quote is taken as closing rather than waiting for the byte after it.
    fn scan_record(&mut self, buf: &[u8], start: usize, at_eof: bool) -> Scan {
        let mut i = self.scan.max(start);
        match self.options.format {
            CopyFormat::Text => loop {
                if self.escaped {
                    // The byte after a backslash, a newline included, is data.
                    if i >= buf.len() {
                        break;
                    }
                    self.escaped = false;
                    i += 1;
                }
                match memchr::memchr2(b'\\', b'\n', &buf[i..]) {
                    None => {
                        i = buf.len();
                        break;
                    }
                    Some(offset) if buf[i + offset] == b'\n' => return Scan::End(i + offset),
                    Some(offset) => {
                        self.escaped = true;
                        i += offset + 1;
                    }
                }
            },
            CopyFormat::Csv => {
                let (quote, escape) = (self.options.quote, self.options.escape);
                while i < buf.len() {
                    let b = buf[i];
                    if self.in_quotes {
                        if b == escape || b == quote {
                            // `""` (or `\"` with another escape) is a quote
                            // inside the field; a lone quote closes it. The
                            // byte after decides, so wait for it.
                            match buf.get(i + 1) {
                                Some(&next) if b == escape && (next == quote || next == escape) => {
                                    i += 2;
                                    continue;
                                }
                                None if !at_eof => break,
                                _ => {
                                    if b == quote {
                                        self.in_quotes = false;
                                    }
                                }
                            }
                        }
                    } else if b == quote {
                        self.in_quotes = true;
                    } else if b == b'\n' {
                        return Scan::End(i);
                    }
                    i += 1;
                }
            }
        }
        self.scan = i;
        Scan::Incomplete
    }

    /// Turns one complete record into a row; `None` for the header line and
    /// the end marker.
    fn record(&mut self, record: &[u8]) -> Result<Option<Row>, Error> {
        self.line += 1;
        if record == b"\\." {
            self.ended = true;
            return Ok(None);
        }
        if self.skip_header {
            self.skip_header = false;
            return Ok(None);
        }
        let row = match self.options.format {
            CopyFormat::Text => self.text_fields(record)?,
            CopyFormat::Csv => self.csv_fields(record)?,
        };
        if row.len() < self.columns.len() {
            let column = &self.columns[row.len()];
            return Err(self.error(
                sqlstate::BAD_COPY_FILE_FORMAT,
                format!("missing data for column \"{column}\""),
            ));
        }
        if row.len() > self.columns.len() {
            return Err(self.error(
                sqlstate::BAD_COPY_FILE_FORMAT,
                "extra data after last expected column",
            ));
        }
        Ok(Some(row))
    }

    fn text_fields(&self, record: &[u8]) -> Result<Row, Error> {
        let delimiter = self.options.delimiter;
        let null = self.options.null.as_bytes();
        let mut row = Vec::with_capacity(self.columns.len());
        let mut field_start = 0;
        let mut i = 0;
        loop {
            let field_end = match memchr::memchr2(delimiter, b'\\', &record[i..]) {
                Some(offset) if record[i + offset] == delimiter => i + offset,
                Some(offset) => {
                    // Skip the escaped byte: an escaped delimiter is data.
                    i = (i + offset + 2).min(record.len());
                    continue;
                }
                None => record.len(),
            };
            let raw = &record[field_start..field_end];
            // NULL is matched on the raw text, before unescaping, as
            // PostgreSQL does: `\N` is NULL, `\\N` is the string `\N`.
            row.push(if raw == null {
                None
            } else {
                Some(self.utf8(unescape_text(raw))?)
            });
            if field_end == record.len() {
                return Ok(row);
            }
            field_start = field_end + 1;
            i = field_start;
        }
    }

    fn csv_fields(&self, record: &[u8]) -> Result<Row, Error> {
        let CopyOptions {
            delimiter,
            quote,
            escape,
            ..
        } = self.options;
        let null = self.options.null.as_bytes();
        let mut row = Vec::with_capacity(self.columns.len());
        let mut field = Vec::new();
        let mut quoted = false;
        let mut in_quotes = false;
        let mut i = 0;
        loop {
            if i >= record.len() {
                if in_quotes {
                    return Err(self.error(
                        sqlstate::BAD_COPY_FILE_FORMAT,
                        "unterminated CSV quoted field",
                    ));
                }
                row.push(self.csv_value(&mut field, quoted, null)?);
                return Ok(row);
            }
            let b = record[i];
            if in_quotes {
                let next = record.get(i + 1).copied();
                if b == escape && (next == Some(quote) || next == Some(escape)) {
                    field.push(record[i + 1]);
                    i += 2;
                    continue;
                }
                if b == quote {
                    in_quotes = false;
                } else {
                    field.push(b);
                }
            } else if b == delimiter {
                row.push(self.csv_value(&mut field, quoted, null)?);
                quoted = false;
            } else if b == quote {
                in_quotes = true;
                quoted = true;
            } else {
                field.push(b);
            }
            i += 1;
        }
    }

    /// A CSV field is NULL only when it matches the null string without any
    /// quoting: `""` is the empty string.
    fn csv_value(
        &self,
        field: &mut Vec<u8>,
        quoted: bool,
        null: &[u8],
    ) -> Result<Option<String>, Error> {
        let bytes = std::mem::take(field);
        if !quoted && bytes == null {
            return Ok(None);
        }
        self.utf8(bytes).map(Some)
    }

    fn utf8(&self, bytes: Vec<u8>) -> Result<String, Error> {
        String::from_utf8(bytes).map_err(|e| {
            let bad = e
                .as_bytes()
                .get(e.utf8_error().valid_up_to())
                .copied()
                .unwrap_or(0);
            self.error(
                CHARACTER_NOT_IN_REPERTOIRE,
                format!("invalid byte sequence for encoding \"UTF8\": 0x{bad:02x}"),
            )
        })
    }

    fn error(&self, code: &'static str, message: impl Into<String>) -> Error {
        Error::new(code, message).with_detail(format!("COPY {}, line {}", self.table, self.line))
    }
}

/// `character_not_in_repertoire`, raised for input that is not UTF-8.
const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";

/// A record's line ending may be CRLF; in text format a data CR is written `\r`.
fn strip_cr(record: &[u8]) -> &[u8] {
    record.strip_suffix(b"\r").unwrap_or(record)
}

/// Text-format escapes: `\b \f \n \r \t \v`, octal `\ooo`, hex `\xhh`, and a
/// backslash before any other byte stands for that byte.
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        // Copy the run up to the next backslash whole.
        let Some(offset) = memchr::memchr(b'\\', &raw[i..]) else {
            out.extend_from_slice(&raw[i..]);
            break;
        };
        out.extend_from_slice(&raw[i..i + offset]);
        i += offset + 1;
        // A backslash that ends the record escapes nothing; PostgreSQL drops it.
        let Some(&c) = raw.get(i) else { break };
        i += 1;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' => match raw.get(i).and_then(|&d| hex_digit(d)) {
                Some(first) => {
                    i += 1;
                    let mut value = first;
                    if let Some(second) = raw.get(i).and_then(|&d| hex_digit(d)) {
                        value = value * 16 + second;
                        i += 1;
                    }
                    out.push(value);
                }
                None => out.push(b'x'),
            },
            other => out.push(other),
        }
    }
    out
}

fn hex_digit(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    fn parse_chunks(
        options: &CopyOptions,
        ncols: usize,
        chunks: &[&[u8]],
    ) -> Result<Vec<Row>, Error> {
        let mut parser = CopyParser::new(options, "t", &columns(ncols), 1 << 20);
        let mut rows = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut rows)?;
        }
        parser.finish(&mut rows)?;
        Ok(rows)
    }

    fn parse(options: &CopyOptions, ncols: usize, data: &[u8]) -> Result<Vec<Row>, Error> {
        parse_chunks(options, ncols, &[data])
    }

    /// Every split of `data` into two chunks and into single bytes must give
    /// the same rows as the whole input.
    fn assert_split_invariant(options: &CopyOptions, ncols: usize, data: &[u8]) {
        let whole = parse(options, ncols, data).expect("whole input parses");
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(
                parse_chunks(options, ncols, &[a, b]).expect("split parses"),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(
            parse_chunks(options, ncols, &bytes).expect("bytes parse"),
            whole
        );
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn text_rows_with_escapes_and_null() {
        let rows = parse(
            &CopyOptions::text(),
            3,
            b"1\ta\\tb\t\\N\n2\tline\\nbreak\\\\\t\\\\N\n",
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![some("1"), some("a\tb"), None],
                vec![some("2"), some("line\nbreak\\"), some("\\N")],
            ]
        );
    }

    #[test]
    fn text_octal_hex_and_other_escapes() {
        let rows = parse(
            &CopyOptions::text(),
            1,
            b"\\101\\x42\\x4a\\b\\f\\v\\r\\q\\xZ\n",
        )
        .unwrap();
        assert_eq!(rows, vec![vec![some("ABJ\u{8}\u{c}\u{b}\rqxZ")]]);
    }

    #[test]
    fn text_escaped_delimiter_and_newline_are_data() {
        let rows = parse(&CopyOptions::text(), 2, b"a\\\tb\tc\\\nd\n").unwrap();
        assert_eq!(rows, vec![vec![some("a\tb"), some("c\nd")]]);
    }

    #[test]
    fn text_empty_string_is_not_null() {
        let rows = parse(&CopyOptions::text(), 2, b"\t\n").unwrap();
        assert_eq!(rows, vec![vec![some(""), some("")]]);
    }

    #[test]
    fn text_crlf_and_missing_final_newline() {
        let rows = parse(&CopyOptions::text(), 2, b"1\ta\r\n2\tb").unwrap();
        assert_eq!(
            rows,
            vec![vec![some("1"), some("a")], vec![some("2"), some("b")]]
        );
    }

    #[test]
    fn end_marker_stops_the_data() {
        let rows = parse(&CopyOptions::text(), 1, b"1\n\\.\ngarbage\tmore\n").unwrap();
        assert_eq!(rows, vec![vec![some("1")]]);
        let rows = parse(&CopyOptions::csv(), 1, b"1\n\\.\n").unwrap();
        assert_eq!(rows, vec![vec![some("1")]]);
    }

    #[test]
    fn text_custom_delimiter_and_null() {
        let options = CopyOptions {
            delimiter: b'|',
            null: "NULL".into(),
            ..CopyOptions::text()
        };
        let rows = parse(&options, 3, b"a|NULL|b\\|c\n").unwrap();
        assert_eq!(rows, vec![vec![some("a"), None, some("b|c")]]);
    }

    #[test]
    fn text_split_anywhere_gives_same_rows() {
        assert_split_invariant(
            &CopyOptions::text(),
            3,
            b"1\ta\\tb\t\\N\r\n2\t\\x41\\101\t\\\\\n3\tline\\\nbreak\tz\n\\.\n",
        );
    }

    #[test]
    fn text_long_fields_with_escapes_far_in() {
        // Escapes far into a field and an escaped backslash right before a delimiter:
        // the scans skip whole runs between them.
        let long = "x".repeat(300);
        let data = format!("{long}\\t{long}\t{long}\\\\\t\\N\n{long}\\\n{long}\t\t\n");
        let options = CopyOptions::text();
        let rows = parse(&options, 3, data.as_bytes()).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![
                    some(&format!("{long}\t{long}")),
                    some(&format!("{long}\\")),
                    None
                ],
                vec![some(&format!("{long}\n{long}")), some(""), some("")],
            ]
        );
        assert_split_invariant(&options, 3, data.as_bytes());
    }

    #[test]
    fn wrong_column_count_is_bad_copy_format() {
        let err = parse(&CopyOptions::text(), 3, b"1\t2\t3\n4\t5\n").unwrap_err();
        assert_eq!(err.code, sqlstate::BAD_COPY_FILE_FORMAT);
        assert_eq!(err.message, "missing data for column \"c2\"");
        assert_eq!(err.detail.as_deref(), Some("COPY t, line 2"));

        let err = parse(&CopyOptions::csv(), 2, b"1,2,3\n").unwrap_err();
        assert_eq!(err.code, sqlstate::BAD_COPY_FILE_FORMAT);
        assert_eq!(err.message, "extra data after last expected column");
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let err = parse(&CopyOptions::text(), 1, b"\xff\xfe\n").unwrap_err();
        assert_eq!(err.code, "22021");
        let err = parse(&CopyOptions::text(), 1, b"\\377\n").unwrap_err();
        assert_eq!(err.code, "22021");
    }

    #[test]
    fn csv_quoting_null_and_empty() {
        let rows = parse(
            &CopyOptions::csv(),
            4,
            b"1,\"a,b\",,\"\"\n2,\"say \"\"hi\"\"\",x y ,\"multi\nline\"\n",
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![some("1"), some("a,b"), None, some("")],
                vec![
                    some("2"),
                    some("say \"hi\""),
                    some("x y "),
                    some("multi\nline")
                ],
            ]
        );
    }

    #[test]
    fn csv_header_is_skipped() {
        let options = CopyOptions {
            header: true,
            ..CopyOptions::csv()
        };
        let rows = parse(&options, 2, b"id,name\n1,a\n").unwrap();
        assert_eq!(rows, vec![vec![some("1"), some("a")]]);
    }

    #[test]
    fn csv_other_escape_character() {
        let options = CopyOptions {
            escape: b'\\',
            ..CopyOptions::csv()
        };
        let rows = parse(&options, 2, b"\"a\\\"b\",\"c\\\\d\"\n").unwrap();
        assert_eq!(rows, vec![vec![some("a\"b"), some("c\\d")]]);
    }

    #[test]
    fn csv_quoted_null_string_is_a_value() {
        let options = CopyOptions {
            null: "NULL".into(),
            ..CopyOptions::csv()
        };
        let rows = parse(&options, 3, b"NULL,\"NULL\",\n").unwrap();
        assert_eq!(rows, vec![vec![None, some("NULL"), some("")]]);
    }

    #[test]
    fn csv_unterminated_quote_is_an_error() {
        let err = parse(&CopyOptions::csv(), 2, b"1,\"abc\n").unwrap_err();
        assert_eq!(err.code, sqlstate::BAD_COPY_FILE_FORMAT);
        assert_eq!(err.message, "unterminated CSV quoted field");
    }

    #[test]
    fn csv_split_anywhere_gives_same_rows() {
        assert_split_invariant(
            &CopyOptions {
                header: true,
                ..CopyOptions::csv()
            },
            3,
            b"a,b,c\r\n1,\"x,\"\"y\"\"\",\r\n2,\"multi\r\nline\",\"\"\n3,,\"end\"",
        );
        assert_split_invariant(
            &CopyOptions {
                escape: b'\\',
                ..CopyOptions::csv()
            },
            2,
            b"\"a\\\"b\",\"c\\\\\"\n\"\\\\\",x\n",
        );
    }

    #[test]
    fn overlong_record_is_refused() {
        let mut parser = CopyParser::new(&CopyOptions::text(), "t", &columns(1), 8);
        let mut rows = Vec::new();
        let err = parser.feed(b"0123456789", &mut rows).unwrap_err();
        assert_eq!(err.code, sqlstate::PROGRAM_LIMIT_EXCEEDED);
    }

    #[test]
    fn many_rows_in_one_chunk() {
        let mut data = Vec::new();
        for i in 0..100_000 {
            data.extend_from_slice(format!("{i}\tname {i}\n").as_bytes());
        }
        let rows = parse(&CopyOptions::text(), 2, &data).unwrap();
        assert_eq!(rows.len(), 100_000);
        assert_eq!(rows[99_999], vec![some("99999"), some("name 99999")]);
    }
}
