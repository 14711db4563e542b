//! `COPY … TO STDOUT` lines: values already in PostgreSQL's text output
//! format, escaped (text) or quoted (CSV) the way PostgreSQL writes them.

use super::{CopyFormat, CopyOptions};

/// Appends one data line, newline included, for `fields` (`None` = NULL).
pub(crate) fn write_line(out: &mut Vec<u8>, options: &CopyOptions, fields: &[Option<&[u8]>]) {
    let single = fields.len() == 1;
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(options.delimiter);
        }
        match options.format {
            CopyFormat::Text => write_text_field(out, options, *field),
            CopyFormat::Csv => write_csv_field(out, options, *field, single),
        }
    }
    out.push(b'\n');
}

/// Appends the CSV header line: the column names, quoted where needed.
pub(crate) fn write_header(out: &mut Vec<u8>, options: &CopyOptions, names: &[&str]) {
    let fields: Vec<Option<&[u8]>> = names.iter().map(|n| Some(n.as_bytes())).collect();
    write_line(out, options, &fields);
}

/// Text format: NULL is the null string; control characters, the backslash
/// and the delimiter are backslash-escaped so that the line splits back.
fn write_text_field(out: &mut Vec<u8>, options: &CopyOptions, field: Option<&[u8]>) {
    let Some(value) = field else {
        out.extend_from_slice(options.null.as_bytes());
        return;
    };
    for &b in value {
        match b {
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x0b => out.extend_from_slice(b"\\v"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ if b == options.delimiter => {
                out.push(b'\\');
                out.push(b);
            }
            _ => out.push(b),
        }
    }
}

/// CSV: NULL is the null string unquoted; a value is quoted when it holds the
/// delimiter, the quote, a line break, equals the null string (so the empty
/// string is `""` by default), or is a lone `\.` that would read as the end
/// marker. Inside quotes the quote and escape characters are escaped.
fn write_csv_field(out: &mut Vec<u8>, options: &CopyOptions, field: Option<&[u8]>, single: bool) {
    let Some(value) = field else {
        out.extend_from_slice(options.null.as_bytes());
        return;
    };
    let needs_quotes = value == options.null.as_bytes()
        || (single && value == b"\\.")
        || value
            .iter()
            .any(|&b| b == options.delimiter || b == options.quote || b == b'\n' || b == b'\r');
    if !needs_quotes {
        out.extend_from_slice(value);
        return;
    }
    out.push(options.quote);
    for &b in value {
        if b == options.quote || b == options.escape {
            out.push(options.escape);
        }
        out.push(b);
    }
    out.push(options.quote);
}

#[cfg(test)]
mod tests {
    use super::super::parse::CopyParser;
    use super::*;

    fn line(options: &CopyOptions, fields: &[Option<&str>]) -> String {
        let fields: Vec<Option<&[u8]>> = fields.iter().map(|f| f.map(str::as_bytes)).collect();
        let mut out = Vec::new();
        write_line(&mut out, options, &fields);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn text_escapes_specials_and_writes_null() {
        let options = CopyOptions::text();
        assert_eq!(
            line(&options, &[Some("a\tb"), None, Some("x\\y\nz\r")]),
            "a\\tb\t\\N\tx\\\\y\\nz\\r\n"
        );
        assert_eq!(line(&options, &[Some("\u{8}\u{c}\u{b}")]), "\\b\\f\\v\n");
        assert_eq!(line(&options, &[Some("")]), "\n");
    }

    #[test]
    fn text_escapes_a_custom_delimiter() {
        let options = CopyOptions {
            delimiter: b'|',
            ..CopyOptions::text()
        };
        assert_eq!(
            line(&options, &[Some("a|b"), Some("c\td")]),
            "a\\|b|c\\td\n"
        );
    }

    #[test]
    fn csv_quotes_only_where_needed() {
        let options = CopyOptions::csv();
        assert_eq!(
            line(
                &options,
                &[
                    Some("plain"),
                    Some("a,b"),
                    Some("say \"hi\""),
                    Some("two\nlines"),
                    None,
                    Some("")
                ]
            ),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",,\"\"\n"
        );
        assert_eq!(line(&options, &[Some("\\.")]), "\"\\.\"\n");
        assert_eq!(line(&options, &[Some("\\."), Some("x")]), "\\.,x\n");
    }

    #[test]
    fn csv_with_other_escape_and_null() {
        let options = CopyOptions {
            escape: b'\\',
            null: "NULL".into(),
            ..CopyOptions::csv()
        };
        assert_eq!(
            line(&options, &[Some("a\"b\\c"), Some("NULL"), None]),
            "\"a\\\"b\\\\c\",\"NULL\",NULL\n"
        );
    }

    #[test]
    fn header_line() {
        let mut out = Vec::new();
        write_header(&mut out, &CopyOptions::csv(), &["id", "full,name"]);
        assert_eq!(out, b"id,\"full,name\"\n");
    }

    /// What COPY TO writes, COPY FROM reads back unchanged.
    #[test]
    fn formatted_lines_parse_back() {
        let values: Vec<Option<&str>> = vec![
            Some("plain"),
            None,
            Some(""),
            Some("tab\there"),
            Some("nl\nand\r\ncr"),
            Some("back\\slash"),
            Some("quote\"d,comma"),
            Some("\\N"),
            Some("NULL"),
            Some("\u{8}\u{b}\u{c} ctl"),
            Some("unicode ✓"),
        ];
        let options_list = [
            CopyOptions::text(),
            CopyOptions::csv(),
            // Text format cannot tell a value equal to the null string from
            // NULL (nor can PostgreSQL's), so pick one no value matches.
            CopyOptions {
                delimiter: b'|',
                null: "<null>".into(),
                ..CopyOptions::text()
            },
            CopyOptions {
                escape: b'\\',
                ..CopyOptions::csv()
            },
            CopyOptions {
                delimiter: b';',
                null: "NULL".into(),
                ..CopyOptions::csv()
            },
        ];
        for options in &options_list {
            let fields: Vec<Option<&[u8]>> = values.iter().map(|v| v.map(str::as_bytes)).collect();
            let mut data = Vec::new();
            write_line(&mut data, options, &fields);
            write_line(&mut data, options, &fields);
            let columns: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
            let mut parser = CopyParser::new(options, "t", &columns, 1 << 20);
            let mut rows = Vec::new();
            parser.feed(&data, &mut rows).expect("parses");
            parser.finish(&mut rows).expect("finishes");
            let expected: Vec<Option<String>> =
                values.iter().map(|v| v.map(str::to_owned)).collect();
            assert_eq!(
                rows,
                vec![expected.clone(), expected],
                "options {options:?}"
            );
        }
    }
}
