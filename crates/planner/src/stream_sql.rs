//! The statements topics add to PostgreSQL's grammar, parsed on the same
//! sqlparser token stream as everything else:
//!
//! ```text
//! CREATE TOPIC [IF NOT EXISTS] name (columns) [WITH (option = value, …)]
//! ALTER TOPIC name SET (option = value, …)
//! DROP TOPIC [IF EXISTS] name [, …]
//! SUBSCRIBE [TO] name [FROM BEGINNING | FROM END | FROM OFFSET n | FROM TIMESTAMP 'ts'
//!                     | FROM OFFSET (partition = n, …)]
//!           [UP TO END | UP TO OFFSET n] [GROUP 'g'] [WITH (earliest)]
//! COPY (SUBSCRIBE …) TO STDOUT [[WITH] (FORMAT csv, …)]
//! DECLARE c CURSOR [WITH HOLD] FOR SUBSCRIBE …
//! FETCH [n | ALL | NEXT | FORWARD n] [FROM | IN] c [WITH (timeout = '5s')]
//! CLOSE c | CLOSE ALL
//! COMMIT OFFSETS [FOR] c
//! ```
//!
//! Option names follow Materialize where they overlap (`FETCH … WITH
//! (timeout = …)`). Everything else goes to sqlparser unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// One topic statement.
#[derive(Debug, Clone)]
pub(crate) enum StreamStatement {
    CreateTopic(Box<ast::CreateTable>),
    AlterTopic {
        name: ast::ObjectName,
        options: Vec<(String, String)>,
    },
    DropTopic {
        names: Vec<ast::ObjectName>,
        if_exists: bool,
    },
    /// `SUBSCRIBE` on its own: rows stream until the client cancels.
    Subscribe(Subscribe),
    /// `COPY (SUBSCRIBE …) TO STDOUT`, with the COPY options as given.
    CopySubscribe {
        subscribe: Subscribe,
        options: Vec<(String, Option<String>)>,
    },
    Declare {
        cursor: String,
        subscribe: Subscribe,
    },
    Fetch {
        cursor: String,
        /// `None`: ALL.
        count: Option<u64>,
        timeout: Option<Duration>,
    },
    /// `None`: CLOSE ALL.
    Close(Option<String>),
    CommitOffsets(String),
}

impl StreamStatement {
    pub(crate) fn tag(&self) -> &'static str {
        match self {
            StreamStatement::CreateTopic(_) => "CREATE TOPIC",
            StreamStatement::AlterTopic { .. } => "ALTER TOPIC",
            StreamStatement::DropTopic { .. } => "DROP TOPIC",
            StreamStatement::Subscribe(_) => "SUBSCRIBE",
            StreamStatement::CopySubscribe { .. } => "COPY",
            StreamStatement::Declare { .. } => "DECLARE CURSOR",
            StreamStatement::Fetch { .. } => "FETCH",
            StreamStatement::Close(_) => "CLOSE CURSOR",
            StreamStatement::CommitOffsets(_) => "COMMIT OFFSETS",
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Start {
    Beginning,
    End,
    Offset(u64),
    /// An offset per listed partition; the others start at the beginning.
    Offsets(BTreeMap<u32, u64>),
    /// The text of a timestamp, parsed at execution like a SQL literal.
    Timestamp(String),
    /// The group's committed offsets (the default with GROUP).
    Committed,
}

/// Where a bounded subscription stops (Materialize's `UP TO`): it ends, or
/// its FETCHes return nothing at once, when every partition is there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum UpTo {
    /// Each partition's end when the subscription opens: what is there now.
    End,
    /// Before offset n in every partition.
    Offset(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct Subscribe {
    pub topic: ast::ObjectName,
    pub start: Start,
    pub up_to: Option<UpTo>,
    pub group: Option<String>,
    /// Start a partition whose requested offset is below retention at its
    /// first retained offset instead of failing.
    pub earliest: bool,
}

fn word_is(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

fn peek_word(parser: &Parser, word: &str) -> bool {
    word_is(&parser.peek_token_ref().token, word)
}

fn peek_words(parser: &Parser, words: &[&str]) -> bool {
    words
        .iter()
        .enumerate()
        .all(|(n, word)| word_is(&parser.peek_nth_token(n).token, word))
}

fn parse_word(parser: &mut Parser, word: &str) -> bool {
    if peek_word(parser, word) {
        parser.next_token();
        true
    } else {
        false
    }
}

fn expect_word(parser: &mut Parser, word: &str) -> Result<(), ParserError> {
    if parse_word(parser, word) {
        Ok(())
    } else {
        parser.expected(&word.to_ascii_uppercase(), parser.peek_token())
    }
}

/// Parses a topic statement if the next tokens start one; `None` leaves
/// the parser where it was for sqlparser.
pub(crate) fn parse(parser: &mut Parser) -> Result<Option<StreamStatement>, ParserError> {
    if peek_words(parser, &["create", "topic"]) {
        parser.next_token();
        parser.next_token();
        let create = parser.parse_create_table(false, false, None, false)?;
        return Ok(Some(StreamStatement::CreateTopic(Box::new(create))));
    }
    if peek_words(parser, &["alter", "topic"]) {
        parser.next_token();
        parser.next_token();
        let name = parser.parse_object_name(false)?;
        expect_word(parser, "set")?;
        let options = parse_assignments(parser)?;
        return Ok(Some(StreamStatement::AlterTopic { name, options }));
    }
    if peek_words(parser, &["drop", "topic"]) {
        parser.next_token();
        parser.next_token();
        let if_exists = if peek_words(parser, &["if", "exists"]) {
            parser.next_token();
            parser.next_token();
            true
        } else {
            false
        };
        let names = parser.parse_comma_separated(|p| p.parse_object_name(false))?;
        return Ok(Some(StreamStatement::DropTopic { names, if_exists }));
    }
    if peek_word(parser, "subscribe") {
        let subscribe = parse_subscribe(parser)?;
        return Ok(Some(StreamStatement::Subscribe(subscribe)));
    }
    if peek_word(parser, "copy")
        && parser.peek_nth_token(1).token == Token::LParen
        && word_is(&parser.peek_nth_token(2).token, "subscribe")
    {
        parser.next_token();
        parser.next_token();
        let subscribe = parse_subscribe(parser)?;
        parser.expect_token(&Token::RParen)?;
        expect_word(parser, "to")?;
        expect_word(parser, "stdout")?;
        parse_word(parser, "with");
        let mut options = Vec::new();
        if parser.consume_token(&Token::LParen) {
            loop {
                let name = parser.parse_identifier()?.value.to_ascii_lowercase();
                let value = match &parser.peek_token_ref().token {
                    Token::Comma | Token::RParen => None,
                    _ => Some(token_text(parser.next_token().token)?),
                };
                options.push((name, value));
                if !parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            parser.expect_token(&Token::RParen)?;
        }
        return Ok(Some(StreamStatement::CopySubscribe { subscribe, options }));
    }
    if peek_word(parser, "declare") {
        // DECLARE name [BINARY] [NO SCROLL] CURSOR [WITH HOLD] FOR SUBSCRIBE:
        // only the SUBSCRIBE form is ours; anything else is sqlparser's.
        let mut n = 2;
        while !matches!(
            parser.peek_nth_token(n).token,
            Token::EOF | Token::SemiColon
        ) && !word_is(&parser.peek_nth_token(n).token, "for")
        {
            n += 1;
        }
        if !word_is(&parser.peek_nth_token(n + 1).token, "subscribe") {
            return Ok(None);
        }
        parser.next_token();
        let cursor = crate::names::identifier(&parser.parse_identifier()?);
        for _ in 2..n {
            let token = parser.next_token();
            if ![
                "cursor", "no", "scroll", "with", "without", "hold", "binary",
            ]
            .iter()
            .any(|w| word_is(&token.token, w))
            {
                return parser.expected("CURSOR", token);
            }
        }
        expect_word(parser, "for")?;
        let subscribe = parse_subscribe(parser)?;
        return Ok(Some(StreamStatement::Declare { cursor, subscribe }));
    }
    if peek_word(parser, "fetch") {
        parser.next_token();
        let count = if parse_word(parser, "all") {
            None
        } else if parse_word(parser, "next") {
            Some(1)
        } else if parse_word(parser, "forward") {
            if parse_word(parser, "all") {
                None
            } else {
                Some(parse_count(parser, "FETCH count")?.unwrap_or(1))
            }
        } else {
            Some(parse_count(parser, "FETCH count")?.unwrap_or(1))
        };
        if !parse_word(parser, "from") {
            parse_word(parser, "in");
        }
        let cursor = crate::names::identifier(&parser.parse_identifier()?);
        let mut timeout = None;
        if parse_word(parser, "with") {
            for (name, value) in parse_assignments(parser)? {
                match name.as_str() {
                    "timeout" => {
                        timeout =
                            Some(crate::settings::parse_duration_ms(&value).ok_or_else(|| {
                                ParserError::ParserError(format!(
                                    "invalid FETCH timeout \"{value}\""
                                ))
                            })?)
                    }
                    other => {
                        return Err(ParserError::ParserError(format!(
                            "unknown FETCH option \"{other}\" (timeout)"
                        )))
                    }
                }
            }
        }
        return Ok(Some(StreamStatement::Fetch {
            cursor,
            count,
            timeout,
        }));
    }
    if peek_word(parser, "close") {
        parser.next_token();
        if parse_word(parser, "all") {
            return Ok(Some(StreamStatement::Close(None)));
        }
        let cursor = crate::names::identifier(&parser.parse_identifier()?);
        return Ok(Some(StreamStatement::Close(Some(cursor))));
    }
    if peek_words(parser, &["commit", "offsets"]) {
        parser.next_token();
        parser.next_token();
        parse_word(parser, "for");
        let cursor = crate::names::identifier(&parser.parse_identifier()?);
        return Ok(Some(StreamStatement::CommitOffsets(cursor)));
    }
    Ok(None)
}

/// A non-negative integer if one comes next; `what` names it in the error
/// for a negative one.
fn parse_count(parser: &mut Parser, what: &str) -> Result<Option<u64>, ParserError> {
    match parser.peek_token_ref().token {
        Token::Number(..) => Ok(Some(parser.parse_literal_uint()?)),
        Token::Minus => Err(ParserError::ParserError(format!(
            "{what} must not be negative (cursors over topics only move forward)"
        ))),
        _ => Ok(None),
    }
}

fn token_text(token: Token) -> Result<String, ParserError> {
    match token {
        Token::Word(w) => Ok(w.value),
        Token::SingleQuotedString(s) => Ok(s),
        Token::Number(n, _) => Ok(n),
        other => Err(ParserError::ParserError(format!(
            "expected an option value, found {other}"
        ))),
    }
}

/// `(name = value, name value, name, …)`; names fold to lower case.
fn parse_assignments(parser: &mut Parser) -> Result<Vec<(String, String)>, ParserError> {
    parser.expect_token(&Token::LParen)?;
    let mut out = Vec::new();
    loop {
        let name = parser.parse_identifier()?.value.to_ascii_lowercase();
        let _ = parser.consume_token(&Token::Eq);
        let value = match &parser.peek_token_ref().token {
            Token::Comma | Token::RParen => "true".to_string(),
            Token::Minus => {
                parser.next_token();
                format!("-{}", token_text(parser.next_token().token)?)
            }
            _ => token_text(parser.next_token().token)?,
        };
        out.push((name, value));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    Ok(out)
}

/// `partition = offset, …)`, after the opening parenthesis.
fn parse_partition_offsets(parser: &mut Parser) -> Result<BTreeMap<u32, u64>, ParserError> {
    let mut offsets = BTreeMap::new();
    loop {
        let Some(partition) = parse_count(parser, "a partition")? else {
            return parser.expected("a partition number", parser.peek_token());
        };
        let partition = u32::try_from(partition)
            .map_err(|_| ParserError::ParserError(format!("no partition {partition}")))?;
        parser.expect_token(&Token::Eq)?;
        let Some(offset) = parse_count(parser, "an offset")? else {
            return parser.expected("an offset", parser.peek_token());
        };
        if offsets.insert(partition, offset).is_some() {
            return Err(ParserError::ParserError(format!(
                "partition {partition} given twice"
            )));
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    Ok(offsets)
}

fn parse_subscribe(parser: &mut Parser) -> Result<Subscribe, ParserError> {
    expect_word(parser, "subscribe")?;
    parse_word(parser, "to");
    let topic = parser.parse_object_name(false)?;
    let mut start = None;
    let mut group = None;
    let mut earliest = false;
    let mut up_to = None;
    loop {
        if parse_word(parser, "from") {
            if start.is_some() {
                return Err(ParserError::ParserError("FROM given twice".into()));
            }
            start = Some(if parse_word(parser, "beginning") {
                Start::Beginning
            } else if parse_word(parser, "end") {
                Start::End
            } else if parse_word(parser, "offset") {
                if parser.consume_token(&Token::LParen) {
                    Start::Offsets(parse_partition_offsets(parser)?)
                } else {
                    match parse_count(parser, "an offset")? {
                        Some(n) => Start::Offset(n),
                        None => return parser.expected("an offset", parser.peek_token()),
                    }
                }
            } else if parse_word(parser, "timestamp") {
                Start::Timestamp(parser.parse_literal_string()?)
            } else {
                return parser.expected("BEGINNING, END, OFFSET or TIMESTAMP", parser.peek_token());
            });
        } else if parse_word(parser, "up") {
            expect_word(parser, "to")?;
            if up_to.is_some() {
                return Err(ParserError::ParserError("UP TO given twice".into()));
            }
            up_to = Some(if parse_word(parser, "end") {
                UpTo::End
            } else if parse_word(parser, "offset") {
                match parse_count(parser, "an offset")? {
                    Some(n) => UpTo::Offset(n),
                    None => return parser.expected("an offset", parser.peek_token()),
                }
            } else {
                return parser.expected("END or OFFSET", parser.peek_token());
            });
        } else if parse_word(parser, "group") {
            group = Some(parser.parse_literal_string()?);
        } else if peek_word(parser, "with") && parser.peek_nth_token(1).token == Token::LParen {
            parser.next_token();
            for (name, value) in parse_assignments(parser)? {
                match name.as_str() {
                    "earliest" => earliest = value.eq_ignore_ascii_case("true"),
                    other => {
                        return Err(ParserError::ParserError(format!(
                            "unknown SUBSCRIBE option \"{other}\" (earliest)"
                        )))
                    }
                }
            }
        } else {
            break;
        }
    }
    let start = start.unwrap_or(if group.is_some() {
        Start::Committed
    } else {
        Start::Beginning
    });
    Ok(Subscribe {
        topic,
        start,
        up_to,
        group,
        earliest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

    fn parse_one(sql: &str) -> Option<StreamStatement> {
        let dialect = PostgreSqlDialect {};
        let mut parser = Parser::new(&dialect).try_with_sql(sql).unwrap();
        let parsed = parse(&mut parser).unwrap();
        assert_eq!(parser.peek_token_ref().token, Token::EOF, "{sql}");
        parsed
    }

    #[test]
    fn parses_the_topic_statements() {
        let Some(StreamStatement::CreateTopic(create)) = parse_one(
            "CREATE TOPIC orders (id bigint, customer text) WITH (partitions = 4, partition_key = 'customer')",
        ) else {
            panic!()
        };
        assert_eq!(create.name.to_string(), "orders");
        let Some(StreamStatement::Declare { cursor, subscribe }) =
            parse_one("DECLARE C CURSOR FOR SUBSCRIBE orders GROUP 'billing'")
        else {
            panic!()
        };
        assert_eq!(cursor, "c");
        assert_eq!(subscribe.group.as_deref(), Some("billing"));
        assert_eq!(subscribe.start, Start::Committed);
        let Some(StreamStatement::Fetch { count, timeout, .. }) =
            parse_one("FETCH 500 FROM c WITH (timeout = '5s')")
        else {
            panic!()
        };
        assert_eq!((count, timeout), (Some(500), Some(Duration::from_secs(5))));
        let Some(StreamStatement::CopySubscribe { subscribe, options }) =
            parse_one("COPY (SUBSCRIBE orders FROM OFFSET 7) TO STDOUT WITH (FORMAT csv)")
        else {
            panic!()
        };
        assert_eq!(subscribe.start, Start::Offset(7));
        let Some(StreamStatement::Subscribe(subscribe)) =
            parse_one("SUBSCRIBE orders FROM OFFSET (0 = 10, 3 = 0)")
        else {
            panic!()
        };
        assert_eq!(
            subscribe.start,
            Start::Offsets(BTreeMap::from([(0, 10), (3, 0)]))
        );
        let Some(StreamStatement::CopySubscribe { subscribe, .. }) =
            parse_one("COPY (SUBSCRIBE orders FROM BEGINNING UP TO END) TO STDOUT")
        else {
            panic!()
        };
        assert_eq!(subscribe.up_to, Some(UpTo::End));
        let Some(StreamStatement::Subscribe(subscribe)) =
            parse_one("SUBSCRIBE orders UP TO OFFSET 5 GROUP 'g'")
        else {
            panic!()
        };
        assert_eq!(subscribe.up_to, Some(UpTo::Offset(5)));
        assert_eq!(options, vec![("format".into(), Some("csv".into()))]);
        assert!(matches!(
            parse_one("SUBSCRIBE orders FROM TIMESTAMP '2026-01-01 00:00:00'"),
            Some(StreamStatement::Subscribe(Subscribe {
                start: Start::Timestamp(_),
                ..
            }))
        ));
        assert!(matches!(
            parse_one("CLOSE ALL"),
            Some(StreamStatement::Close(None))
        ));
        assert!(matches!(
            parse_one("COMMIT OFFSETS FOR c"),
            Some(StreamStatement::CommitOffsets(_))
        ));
        assert!(matches!(
            parse_one("ALTER TOPIC orders SET (retention = '1 day')"),
            Some(StreamStatement::AlterTopic { .. })
        ));
    }

    #[test]
    fn leaves_other_statements_to_sqlparser() {
        let dialect = PostgreSqlDialect {};
        for sql in [
            "COMMIT",
            "DECLARE c CURSOR FOR SELECT 1",
            "COPY t TO STDOUT",
            "CREATE TABLE t (a int)",
        ] {
            let mut parser = Parser::new(&dialect).try_with_sql(sql).unwrap();
            assert!(parse(&mut parser).unwrap().is_none(), "{sql}");
        }
    }

    #[test]
    fn refuses_negative_offsets_and_counts() {
        let dialect = PostgreSqlDialect {};
        for sql in [
            "SUBSCRIBE t FROM OFFSET -1",
            "FETCH -5 FROM c",
            "SUBSCRIBE t FROM OFFSET (0 = -1)",
            "SUBSCRIBE t FROM OFFSET (0 = 1, 0 = 2)",
            "SUBSCRIBE t FROM OFFSET ()",
            "SUBSCRIBE t FROM OFFSET (0 1)",
            "SUBSCRIBE t UP TO OFFSET -3",
            "SUBSCRIBE t UP TO END UP TO END",
        ] {
            let mut parser = Parser::new(&dialect).try_with_sql(sql).unwrap();
            assert!(parse(&mut parser).is_err(), "{sql}");
        }
    }
}
