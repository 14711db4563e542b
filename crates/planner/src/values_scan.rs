//! A multi-row `INSERT … VALUES` of literals, read without tokenizing every row.
//!
//! Batched inserts (drivers' `executemany`, `pg_dump --inserts`, topic producers) send
//! statements of thousands of rows of plain literals. sqlparser tokenizes the whole text
//! into tokens that each own a `String` and a span, then walks each value through its
//! expression parser (precedence climbing, stack checks): most of the server's CPU for such
//! a load, far more than writing the rows. Rows of literals need none of that: the text of
//! `('ada', 42, NULL)` says what each value is.
//!
//! [`split`] scans the rows of such a statement (the first one only to find where it
//! ends) and makes every later row the expressions sqlparser would make of it. sqlparser still parses the statement
//! up to the end of its first row (the head: `INSERT INTO t (columns) VALUES (…)`), so
//! every decision about the statement itself stays its own; [`append_rows`] then adds the
//! scanned rows to that parse, which gives exactly the tree sqlparser would build from the
//! whole text. That holds because the head parse must be an INSERT whose VALUES list, at the
//! top level, ended with the text: in the whole text the parser would be at the same point
//! and read `, (…)` rows, whose literals it turns into the same values.
//!
//! The scanner takes only what it reads exactly like sqlparser's PostgreSQL tokenizer, and
//! gives up (the caller parses the whole text as usual) on anything else: comments, escape
//! or dollar-quoted strings, casts, operators, exponents, a second statement. Values it
//! reads: `'…'` with `''` for a quote, integers and decimals (optionally negated), NULL,
//! TRUE, FALSE and `$n` from `$1` to the largest a Bind can supply. Between tokens, only
//! spaces, tabs and line breaks.

use datafusion::sql::sqlparser::ast::{self, Expr, Value};

/// A statement [`split`] could take apart.
#[derive(Debug)]
pub(crate) struct Split {
    /// Where the first row ends: sqlparser parses `sql[..head_end]`.
    pub(crate) head_end: usize,
    /// The rows after the first, as sqlparser's expressions.
    pub(crate) rows: Vec<Vec<Expr>>,
}

/// Splits `sql` when it is one `INSERT … VALUES` statement whose rows are all literals
/// the scanner reads (see the module comment); `None` leaves it to sqlparser whole.
pub(crate) fn split(sql: &str) -> Option<Split> {
    let mut scanner = Scanner {
        sql,
        bytes: sql.as_bytes(),
        at: 0,
    };
    scanner.skip_space();
    if !scanner.word()?.eq_ignore_ascii_case("insert") {
        return None;
    }
    scanner.find_values_keyword()?;
    scanner.skip_space();
    let first = scanner.row(0)?;
    let width = first.len();
    let head_end = scanner.at;
    let mut rows = Vec::new();
    loop {
        scanner.skip_space();
        match scanner.peek() {
            Some(b',') => {
                scanner.at += 1;
                scanner.skip_space();
                rows.push(scanner.row(width)?);
            }
            Some(b';') | None => break,
            Some(_) => return None,
        }
    }
    // Only semicolons and white space may follow: a second statement takes the usual path.
    while let Some(byte) = scanner.peek() {
        if byte != b';' && !is_space(byte) {
            return None;
        }
        scanner.at += 1;
    }
    Some(Split { head_end, rows })
}

/// Adds `rows` to the VALUES list of `head`, the parse of a [`Split`]'s head, when that is
/// the plain INSERT the split assumed (its VALUES list at the top level, one row long, with
/// nothing after it). `false` means the statement must be parsed whole.
pub(crate) fn append_rows(head: &mut ast::Statement, rows: Vec<Vec<Expr>>) -> bool {
    let ast::Statement::Insert(insert) = head else {
        return false;
    };
    if insert.on.is_some() || insert.returning.is_some() || insert.settings.is_some() {
        return false;
    }
    let Some(source) = insert.source.as_deref_mut() else {
        return false;
    };
    let follows_values = source.order_by.is_some()
        || source.limit_clause.is_some()
        || source.fetch.is_some()
        || !source.locks.is_empty()
        || source.for_clause.is_some()
        || source.settings.is_some()
        || source.format_clause.is_some()
        || !source.pipe_operators.is_empty();
    if follows_values {
        return false;
    }
    let ast::SetExpr::Values(values) = source.body.as_mut() else {
        return false;
    };
    if values.explicit_row || values.rows.len() != 1 {
        return false;
    }
    values.rows.reserve(rows.len());
    values
        .rows
        .extend(rows.into_iter().map(ast::Parens::with_empty_span));
    true
}

struct Scanner<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    at: usize,
}

/// White space as sqlparser's tokenizer skips it; anything rarer takes the usual path.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// A byte that continues an unquoted ASCII identifier or keyword.
fn is_word_part(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$'
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.at += 1;
        }
    }

    /// An unquoted ASCII word starting here (a letter or `_`, then letters, digits, `_`
    /// and `$`); `None` for anything else, including a word that goes on in non-ASCII
    /// letters, which sqlparser would read as one longer identifier.
    fn word(&mut self) -> Option<&'a str> {
        let start = self.at;
        if !self
            .peek()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            return None;
        }
        while self.peek().is_some_and(is_word_part) {
            self.at += 1;
        }
        if self.peek().is_some_and(|b| !b.is_ascii()) {
            return None;
        }
        Some(&self.sql[start..self.at])
    }

    /// Moves past the first unquoted `VALUES` of the head. The head may hold only words,
    /// quoted identifiers, `.`, `,` and parentheses: enough for a table name and a column
    /// list, and nothing (a string, a comment) that could hide a `VALUES` from this scan.
    fn find_values_keyword(&mut self) -> Option<()> {
        loop {
            match self.peek()? {
                byte if is_space(byte) => self.at += 1,
                b'.' | b',' | b'(' | b')' => self.at += 1,
                b'"' => {
                    let close = self.sql[self.at + 1..].find('"')?;
                    self.at += close + 2;
                }
                _ => {
                    if self.word()?.eq_ignore_ascii_case("values") {
                        return Some(());
                    }
                }
            }
        }
    }

    /// A parenthesized row of literals starting here; `width`: how many values to expect
    /// room for.
    fn row(&mut self, width: usize) -> Option<Vec<Expr>> {
        if self.peek()? != b'(' {
            return None;
        }
        self.at += 1;
        let mut values = Vec::with_capacity(width);
        loop {
            self.skip_space();
            values.push(self.literal()?);
            self.skip_space();
            match self.peek()? {
                b',' => self.at += 1,
                b')' => {
                    self.at += 1;
                    return Some(values);
                }
                _ => return None,
            }
        }
    }

    /// One literal, as the expression sqlparser makes of it. What follows it is checked by
    /// [`Self::row`]: only a `,` or `)` (after white space) may, so that `1e5`, `'a' 'b'` or
    /// `x::int` are never taken for a shorter literal.
    fn literal(&mut self) -> Option<Expr> {
        let value = match self.peek()? {
            b'\'' => Value::SingleQuotedString(self.string()?),
            b'-' => {
                self.at += 1;
                let number = self.number()?;
                return Some(Expr::UnaryOp {
                    op: ast::UnaryOperator::Minus,
                    expr: Box::new(Expr::Value(number.with_empty_span())),
                });
            }
            b'0'..=b'9' => self.number()?,
            b'$' => {
                let start = self.at;
                self.at += 1;
                if !self.skip_digits() {
                    return None;
                }
                // One no Bind could supply is left to the whole parse, which refuses it.
                let number: usize = self.sql[start + 1..self.at].parse().ok()?;
                if !(1..=crate::session::MAX_PARAMETER_NUMBER).contains(&number) {
                    return None;
                }
                Value::Placeholder(self.sql[start..self.at].to_string())
            }
            _ => {
                let word = self.word()?;
                if word.eq_ignore_ascii_case("null") {
                    Value::Null
                } else if word.eq_ignore_ascii_case("true") {
                    Value::Boolean(true)
                } else if word.eq_ignore_ascii_case("false") {
                    Value::Boolean(false)
                } else {
                    return None;
                }
            }
        };
        Some(Expr::Value(value.with_empty_span()))
    }

    /// Moves past a run of ASCII digits; whether there was one.
    fn skip_digits(&mut self) -> bool {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at > start
    }

    /// Digits, optionally a point and more digits (`1.` and `.5` take the usual path).
    fn number(&mut self) -> Option<Value> {
        let start = self.at;
        if !self.skip_digits() {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.skip_digits() {
                return None;
            }
        }
        if self.peek().is_some_and(|b| is_word_part(b) || b == b'.') {
            return None;
        }
        Some(Value::Number(self.sql[start..self.at].to_string(), false))
    }

    /// A standard string (`'…'`, a doubled quote standing for one), unescaped.
    fn string(&mut self) -> Option<String> {
        let mut text = String::new();
        let mut from = self.at + 1;
        loop {
            let close = from + self.sql[from..].find('\'')?;
            if self.bytes.get(close + 1) == Some(&b'\'') {
                text.push_str(&self.sql[from..=close]);
                from = close + 2;
                continue;
            }
            self.at = close + 1;
            if text.is_empty() {
                return Some(self.sql[from..close].to_string());
            }
            text.push_str(&self.sql[from..close]);
            return Some(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parsed(sql: &str) -> Option<Vec<ast::Statement>> {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()
    }

    /// The statement [`split`] and [`append_rows`] make of `sql`, if they take it.
    fn scanned(sql: &str) -> Option<ast::Statement> {
        let split = split(sql)?;
        let mut head = parsed(&sql[..split.head_end])?;
        assert_eq!(head.len(), 1, "{sql}");
        let mut head = head.pop().unwrap();
        append_rows(&mut head, split.rows).then_some(head)
    }

    fn assert_same_as_sqlparser(sql: &str) {
        let ours = scanned(sql).unwrap_or_else(|| panic!("not scanned: {sql}"));
        let whole = parsed(sql).unwrap_or_else(|| panic!("sqlparser refuses: {sql}"));
        assert_eq!(vec![ours], whole, "{sql}");
    }

    #[test]
    fn literal_rows_read_as_sqlparser_reads_them() {
        for sql in [
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
            "insert into t values (1,'a'),(2,'b');",
            "  INSERT INTO s.t (a, \"B\") VALUES\n\t(-1, 'it''s'),\r\n(-0.50, '''')  ;; ",
            "INSERT INTO \"odd \"\" name\" (\"values\") VALUES (1), (2)",
            "INSERT INTO t VALUES ('x'), ('é ✓ 𝄞'), (''), ('a''''b'), ('\\n back\\slash')",
            "INSERT INTO t VALUES (NULL, true, FALSE, $1), (null, True, false, $2)",
            "INSERT INTO t VALUES ($1, $2), ($3, $4), ($10, $65535)",
            "INSERT INTO t VALUES (007, 1.0), (123456789012345678901234567890, 3.14159)",
            "INSERT INTO t VALUES ('x')",
            "INSERT INTO t VALUES ('line\nbreak'), ('tab\there')",
        ] {
            assert_same_as_sqlparser(sql);
        }
    }

    #[test]
    fn anything_else_takes_the_usual_path() {
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1), (now())",
            "INSERT INTO t VALUES (now(), 1), (2, 3)",
            "INSERT INTO t VALUES (1), (2) RETURNING *",
            "INSERT INTO t VALUES (1), (2) ON CONFLICT DO NOTHING",
            "INSERT INTO t VALUES (1), (2); SELECT 1",
            "INSERT INTO t VALUES (1), (1e5)",
            "INSERT INTO t VALUES (1), (1.)",
            "INSERT INTO t VALUES (1), (.5)",
            "INSERT INTO t VALUES (1), (1_000)",
            "INSERT INTO t VALUES (1), (- 1)",
            "INSERT INTO t VALUES (1), (--1\n)",
            "INSERT INTO t VALUES (1), (/* c */ 1)",
            "INSERT INTO t VALUES ('a'), ('a' 'b')",
            "INSERT INTO t VALUES ('a'), ('a'\n'b')",
            "INSERT INTO t VALUES ('a'), (E'a\\n')",
            "INSERT INTO t VALUES ('a'), ($$a$$)",
            "INSERT INTO t VALUES ('a'), ('a'::text)",
            "INSERT INTO t VALUES ('a'), ('unterminated)",
            "INSERT INTO t VALUES (1), ()",
            "INSERT INTO t VALUES (1), (1,)",
            "INSERT INTO t VALUES (1), (1) x",
            "INSERT INTO t VALUES (1), (nullx)",
            "INSERT INTO t VALUES (1), (nullé)",
            "INSERT INTO t VALUES (1), ($)",
            "INSERT INTO t VALUES (1), ($1a)",
            "INSERT INTO t VALUES (1), ($0)",
            "INSERT INTO t VALUES (1), ($65536)",
            "INSERT INTO t VALUES (1), ($99999999999999999999999)",
            "INSERT INTO t VALUES (1), (DEFAULT)",
            "INSERT INTO t VALUES (1), (ROW(1))",
            "INSERT INTO t (values) VALUES (1), (2)",
            "INSERT INTO t SELECT 1",
            "INSERT INTO t -- c\n VALUES (1), (2)",
            "INSERT INTO tä VALUES (1), (2)",
            "INSERT INTO t VALUES\u{a0}(1), (2)",
            "INSERT INTO t VALUES (1)\u{c}, (2)",
        ] {
            let whole_parse_differs = parsed(sql).is_none_or(|whole| match scanned(sql) {
                Some(ours) => vec![ours] != whole,
                None => true,
            });
            assert!(
                split(sql).is_none() || !whole_parse_differs,
                "taken and read differently from sqlparser: {sql}"
            );
        }
        // These must not be taken at all: the first would lose a row, the rest are not
        // literal rows.
        for sql in [
            "INSERT INTO t VALUES (1), (now())",
            "INSERT INTO t VALUES (1), (2); SELECT 1",
            "INSERT INTO t VALUES (1), (1e5)",
            "INSERT INTO t VALUES ('a'), ('a' 'b')",
            "INSERT INTO t VALUES (1), ($0)",
            "INSERT INTO t VALUES (1), ($65536)",
        ] {
            assert!(split(sql).is_none(), "{sql}");
        }
    }

    /// Generated statements (a fixed-seed generator, so a failure repeats) with every
    /// kind of literal the scanner takes and white space between all tokens.
    #[test]
    fn generated_rows_read_as_sqlparser_reads_them() {
        let mut state: u64 = 0x5eed_1234_abcd_0001;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let spaces = ["", " ", "  ", "\n", "\t", "\r\n "];
        let strings = [
            "", "a", "''", "x''y", "é", "𝄞 ✓", "a,b)", "(1, 2)", "\\", "--", "/*",
        ];
        for _ in 0..300 {
            let width = 1 + next(4) as usize;
            let rows = 1 + next(6) as usize;
            let mut sql = String::from("INSERT INTO t VALUES");
            for row in 0..rows {
                if row > 0 {
                    sql.push_str(spaces[next(6) as usize]);
                    sql.push(',');
                }
                sql.push_str(spaces[next(6) as usize]);
                sql.push('(');
                for column in 0..width {
                    if column > 0 {
                        sql.push(',');
                    }
                    sql.push_str(spaces[next(6) as usize]);
                    match next(7) {
                        0 => sql.push_str(&format!("'{}'", strings[next(11) as usize])),
                        1 => sql.push_str(&next(100_000).to_string()),
                        2 => sql.push_str(&format!("-{}.{:02}", next(1000), next(100))),
                        3 => sql.push_str(["NULL", "null", "TRUE", "false"][next(4) as usize]),
                        4 => sql.push_str(&format!("${}", 1 + next(9))),
                        5 => sql.push_str(&format!("{}.5", next(10))),
                        _ => sql.push_str("'plain text'"),
                    }
                    sql.push_str(spaces[next(6) as usize]);
                }
                sql.push(')');
            }
            sql.push_str([";", "", " ; ", "\n"][next(4) as usize]);
            assert_same_as_sqlparser(&sql);
        }
    }
}
