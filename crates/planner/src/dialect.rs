//! The SQL dialect statements are parsed with: sqlparser's PostgreSQL dialect,
//! with one shortcut that changes no parse, and CREATE SEQUENCE read as
//! PostgreSQL reads it.
//!
//! sqlparser reads every expression that starts with a literal (`'text'`, `42`,
//! `E'…'`, `$1`) by first trying it as a typed string (`DATE '2020-05-20'`):
//! it parses a data type, which fails at once on a literal token, and that
//! failure formats an error message quoting the token. For a multi-row
//! INSERT of 100-byte strings this was about 15% of the server's CPU.
//! [`SluiceDialect::parse_prefix`] takes those tokens straight to the value
//! sqlparser would have made of them after the failed attempt; every other
//! prefix, and every other dialect decision, is PostgreSQL's.
//!
//! sqlparser takes CREATE SEQUENCE's options only in one order, where
//! PostgreSQL takes them in any (pg_dump writes `START WITH` before
//! `INCREMENT BY`); [`SluiceDialect::parse_statement`] reads them in any
//! order into the same statement.
//!
//! The wrapper forwards each method [`PostgreSqlDialect`] overrides and reports
//! PostgreSQL's type id, so the parser's `dialect_of!(… is PostgreSqlDialect)`
//! checks hold. When sqlparser is upgraded, compare the forwarded list with
//! `impl Dialect for PostgreSqlDialect` (the unit test below parses a corpus
//! with both dialects and catches a difference it exercises).

use std::any::TypeId;

use datafusion::sql::sqlparser::ast::{
    ColumnOption, DataType, Expr, GeneratedAs, ObjectName, SequenceOptions, Statement,
};
use datafusion::sql::sqlparser::dialect::{Dialect, PostgreSqlDialect, Precedence};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// PostgreSQL's dialect, reading literal-led expressions without the failed
/// typed-string attempt (see the module comment).
#[derive(Debug, Default)]
pub(crate) struct SluiceDialect(PostgreSqlDialect);

impl Dialect for SluiceDialect {
    fn dialect(&self) -> TypeId {
        self.0.dialect()
    }

    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        // These are the tokens sqlparser's own parse_prefix turns into
        // `Expr::Value(parse_value())` once its typed-string attempt, which
        // cannot succeed on them (a data type starts with a word), has failed.
        match parser.peek_token_ref().token {
            Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::Number(_, _)
            | Token::Placeholder(_) => Some(parser.parse_value().map(Expr::Value)),
            _ => self.0.parse_prefix(parser),
        }
    }

    fn parse_statement(&self, parser: &mut Parser) -> Option<Result<Statement, ParserError>> {
        let is_keyword = |n: usize, keyword: Keyword| nth_is(parser, n, keyword);
        if !is_keyword(0, Keyword::CREATE) {
            return self.0.parse_statement(parser);
        }
        let temporary = is_keyword(1, Keyword::TEMP) || is_keyword(1, Keyword::TEMPORARY);
        if !is_keyword(if temporary { 2 } else { 1 }, Keyword::SEQUENCE) {
            return self.0.parse_statement(parser);
        }
        Some(parse_create_sequence(parser, temporary))
    }

    fn parse_column_option(
        &self,
        parser: &mut Parser,
    ) -> Result<Option<Result<Option<ColumnOption>, ParserError>>, ParserError> {
        let is_keyword = |n: usize, keyword: Keyword| nth_is(parser, n, keyword);
        if !is_keyword(0, Keyword::GENERATED) {
            return Ok(None);
        }
        let generated_as = if is_keyword(1, Keyword::ALWAYS)
            && is_keyword(2, Keyword::AS)
            && is_keyword(3, Keyword::IDENTITY)
        {
            GeneratedAs::Always
        } else if is_keyword(1, Keyword::BY)
            && is_keyword(2, Keyword::DEFAULT)
            && is_keyword(3, Keyword::AS)
            && is_keyword(4, Keyword::IDENTITY)
        {
            GeneratedAs::ByDefault
        } else {
            return Ok(None);
        };
        Ok(Some(parse_identity(parser, generated_as)))
    }

    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.0.identifier_quote_style(identifier)
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.0.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.0.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.0.is_identifier_part(ch)
    }

    fn supports_unicode_string_literal(&self) -> bool {
        self.0.supports_unicode_string_literal()
    }

    fn is_reserved_for_identifier(&self, kw: Keyword) -> bool {
        self.0.is_reserved_for_identifier(kw)
    }

    fn is_custom_operator_part(&self, ch: char) -> bool {
        self.0.is_custom_operator_part(ch)
    }

    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        self.0.get_next_precedence(parser)
    }

    fn supports_filter_during_aggregation(&self) -> bool {
        self.0.supports_filter_during_aggregation()
    }

    fn supports_group_by_expr(&self) -> bool {
        self.0.supports_group_by_expr()
    }

    fn prec_value(&self, prec: Precedence) -> u8 {
        self.0.prec_value(prec)
    }

    fn allow_extract_custom(&self) -> bool {
        self.0.allow_extract_custom()
    }

    fn allow_extract_single_quotes(&self) -> bool {
        self.0.allow_extract_single_quotes()
    }

    fn supports_create_index_with_clause(&self) -> bool {
        self.0.supports_create_index_with_clause()
    }

    fn supports_explain_with_utility_options(&self) -> bool {
        self.0.supports_explain_with_utility_options()
    }

    fn supports_listen_notify(&self) -> bool {
        self.0.supports_listen_notify()
    }

    fn supports_factorial_operator(&self) -> bool {
        self.0.supports_factorial_operator()
    }

    fn supports_bitwise_shift_operators(&self) -> bool {
        self.0.supports_bitwise_shift_operators()
    }

    fn supports_comment_on(&self) -> bool {
        self.0.supports_comment_on()
    }

    fn supports_load_extension(&self) -> bool {
        self.0.supports_load_extension()
    }

    fn supports_named_fn_args_with_colon_operator(&self) -> bool {
        self.0.supports_named_fn_args_with_colon_operator()
    }

    fn supports_named_fn_args_with_expr_name(&self) -> bool {
        self.0.supports_named_fn_args_with_expr_name()
    }

    fn supports_empty_projections(&self) -> bool {
        self.0.supports_empty_projections()
    }

    fn supports_nested_comments(&self) -> bool {
        self.0.supports_nested_comments()
    }

    fn supports_string_escape_constant(&self) -> bool {
        self.0.supports_string_escape_constant()
    }

    fn supports_numeric_literal_underscores(&self) -> bool {
        self.0.supports_numeric_literal_underscores()
    }

    fn supports_array_typedef_with_brackets(&self) -> bool {
        self.0.supports_array_typedef_with_brackets()
    }

    fn supports_geometric_types(&self) -> bool {
        self.0.supports_geometric_types()
    }

    fn supports_set_names(&self) -> bool {
        self.0.supports_set_names()
    }

    fn supports_alter_column_type_using(&self) -> bool {
        self.0.supports_alter_column_type_using()
    }

    fn supports_notnull_operator(&self) -> bool {
        self.0.supports_notnull_operator()
    }

    fn supports_interval_options(&self) -> bool {
        self.0.supports_interval_options()
    }

    fn supports_insert_table_alias(&self) -> bool {
        self.0.supports_insert_table_alias()
    }

    fn supports_create_table_like_parenthesized(&self) -> bool {
        self.0.supports_create_table_like_parenthesized()
    }

    fn supports_select_wildcard_with_alias(&self) -> bool {
        self.0.supports_select_wildcard_with_alias()
    }

    fn supports_comma_separated_trim(&self) -> bool {
        self.0.supports_comma_separated_trim()
    }

    fn supports_xml_expressions(&self) -> bool {
        self.0.supports_xml_expressions()
    }

    fn supports_comment_optimizer_hint(&self) -> bool {
        self.0.supports_comment_optimizer_hint()
    }
}

/// Whether the `n`th token from here is `keyword`.
fn nth_is(parser: &Parser, n: usize, keyword: Keyword) -> bool {
    matches!(&parser.peek_nth_token_ref(n).token, Token::Word(w) if w.keyword == keyword)
}

/// `CREATE [TEMP] SEQUENCE [IF NOT EXISTS] name` and its options in any
/// order, as PostgreSQL's grammar has them.
fn parse_create_sequence(parser: &mut Parser, temporary: bool) -> Result<Statement, ParserError> {
    parser.expect_keyword(Keyword::CREATE)?;
    if temporary {
        let _ = parser.parse_one_of_keywords(&[Keyword::TEMP, Keyword::TEMPORARY]);
    }
    parser.expect_keyword(Keyword::SEQUENCE)?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let options = parse_sequence_options(parser)?;
    Ok(Statement::CreateSequence {
        temporary,
        if_not_exists,
        name,
        data_type: options.data_type,
        sequence_options: options.options,
        owned_by: options.owned_by,
    })
}

/// `GENERATED {ALWAYS | BY DEFAULT} AS IDENTITY [( options )]`, the
/// options in any order.
fn parse_identity(
    parser: &mut Parser,
    generated_as: GeneratedAs,
) -> Result<Option<ColumnOption>, ParserError> {
    parser.expect_keyword(Keyword::GENERATED)?;
    match generated_as {
        GeneratedAs::Always => parser.expect_keyword(Keyword::ALWAYS)?,
        _ => {
            parser.expect_keyword(Keyword::BY)?;
            parser.expect_keyword(Keyword::DEFAULT)?
        }
    };
    parser.expect_keyword(Keyword::AS)?;
    parser.expect_keyword(Keyword::IDENTITY)?;
    let mut sequence_options = Vec::new();
    if parser.consume_token(&Token::LParen) {
        let options = parse_sequence_options(parser)?;
        if options.data_type.is_some() || options.owned_by.is_some() {
            return Err(ParserError::ParserError(
                "an identity column's sequence takes neither AS nor OWNED BY".into(),
            ));
        }
        sequence_options = options.options;
        parser.expect_token(&Token::RParen)?;
    }
    Ok(Some(ColumnOption::Generated {
        generated_as,
        sequence_options: Some(sequence_options),
        generation_expr: None,
        generation_expr_mode: None,
        generated_keyword: true,
    }))
}

/// What CREATE SEQUENCE says after the name.
struct SequenceClauses {
    data_type: Option<DataType>,
    options: Vec<SequenceOptions>,
    owned_by: Option<ObjectName>,
}

/// Sequence options in any order. sqlparser's `Cycle(true)` means
/// `NO CYCLE`, as it prints it.
fn parse_sequence_options(parser: &mut Parser) -> Result<SequenceClauses, ParserError> {
    let mut clauses = SequenceClauses {
        data_type: None,
        options: Vec::new(),
        owned_by: None,
    };
    loop {
        let option = if parser.parse_keyword(Keyword::AS) {
            clauses.data_type = Some(parser.parse_data_type()?);
            continue;
        } else if parser.parse_keyword(Keyword::INCREMENT) {
            let by = parser.parse_keyword(Keyword::BY);
            SequenceOptions::IncrementBy(parser.parse_number()?, by)
        } else if parser.parse_keyword(Keyword::MINVALUE) {
            SequenceOptions::MinValue(Some(parser.parse_number()?))
        } else if parser.parse_keywords(&[Keyword::NO, Keyword::MINVALUE]) {
            SequenceOptions::MinValue(None)
        } else if parser.parse_keyword(Keyword::MAXVALUE) {
            SequenceOptions::MaxValue(Some(parser.parse_number()?))
        } else if parser.parse_keywords(&[Keyword::NO, Keyword::MAXVALUE]) {
            SequenceOptions::MaxValue(None)
        } else if parser.parse_keyword(Keyword::START) {
            let with = parser.parse_keyword(Keyword::WITH);
            SequenceOptions::StartWith(parser.parse_number()?, with)
        } else if parser.parse_keyword(Keyword::CACHE) {
            SequenceOptions::Cache(parser.parse_number()?)
        } else if parser.parse_keywords(&[Keyword::NO, Keyword::CYCLE]) {
            SequenceOptions::Cycle(true)
        } else if parser.parse_keyword(Keyword::CYCLE) {
            SequenceOptions::Cycle(false)
        } else if parser.parse_keywords(&[Keyword::OWNED, Keyword::BY]) {
            clauses.owned_by = Some(if parser.parse_keyword(Keyword::NONE) {
                ObjectName::from(vec![datafusion::sql::sqlparser::ast::Ident::new("NONE")])
            } else {
                parser.parse_object_name(false)?
            });
            continue;
        } else {
            return Ok(clauses);
        };
        clauses.options.push(option);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(dialect: &dyn Dialect, sql: &str) -> String {
        match Parser::parse_sql(dialect, sql) {
            Ok(statements) => format!("{statements:?}"),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn parses_exactly_as_postgresql() {
        let corpus = [
            "INSERT INTO t VALUES ('a', 1, -2.5e3, E'x\\ny', $1, NULL, TRUE, 'it''s')",
            "INSERT INTO t (a, b) VALUES ('x' || 'y', 1 + 2 * 3), ($2::int, '1'::numeric(10,2))",
            "SELECT 'a' LIKE 'b', 1 BETWEEN 0 AND 2, 'x' IS NOT NULL, -1, - 'a'::int",
            "SELECT DATE '2020-05-20', INTERVAL '7' DAY, TIMESTAMP WITH TIME ZONE '2020-05-20 7:43:54'",
            "SELECT 'a' 'b', 'a'\n'b', 3 !, 1 << 2, 'abc'[1], '{1,2}'::int[]",
            "SELECT $1 + $2, '1' = ANY('{1}'), 10 % 3, 2 ^ 3, 1::text COLLATE \"C\"",
            "SELECT * FROM t WHERE x IN ('a', 'b') AND y = 1.5 ORDER BY 1 DESC LIMIT 10 OFFSET 2",
            "SELECT count(*) FILTER (WHERE x > 0), e'\\x41', U&'\\0041', $$dollar$$, X'1F'",
            "UPDATE t SET a = 'z', b = b + 1 WHERE id = $1 RETURNING *",
            "SELECT CASE WHEN 1 = 1 THEN 'y' ELSE 'n' END, COALESCE(NULL, 'd'), 'a'.b",
            "SELECT 1 .. 2",
            "SELECT '",
            "INSERT INTO t VALUES (1,)",
            "CREATE SEQUENCE IF NOT EXISTS s AS integer INCREMENT BY -2 MINVALUE -9 NO MAXVALUE START WITH -3 CACHE 10 NO CYCLE OWNED BY t.id",
            "CREATE TEMP SEQUENCE s INCREMENT 1 CYCLE OWNED BY NONE",
            "CREATE TABLE t (a int GENERATED ALWAYS AS IDENTITY, b bigint GENERATED BY DEFAULT AS IDENTITY (INCREMENT BY 1 CACHE 5), c int GENERATED ALWAYS AS (a + 1) STORED, d int NOT NULL)",
        ];
        for sql in corpus {
            assert_eq!(
                parsed(&SluiceDialect::default(), sql),
                parsed(&PostgreSqlDialect {}, sql),
                "{sql}"
            );
        }
    }

    /// The options of the one CREATE SEQUENCE or identity column in `sql`,
    /// as text, sorted: what must not depend on their order.
    fn sequence_options(sql: &str) -> Vec<String> {
        let statement = Parser::parse_sql(&SluiceDialect::default(), sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .remove(0);
        let options = match statement {
            Statement::CreateSequence {
                sequence_options, ..
            } => sequence_options,
            Statement::CreateTable(create) => create.columns[0]
                .options
                .iter()
                .find_map(|o| match &o.option {
                    ColumnOption::Generated {
                        sequence_options, ..
                    } => sequence_options.clone(),
                    _ => None,
                })
                .expect("an identity column"),
            other => panic!("{other}"),
        };
        let mut texts: Vec<String> = options.iter().map(ToString::to_string).collect();
        texts.sort();
        texts
    }

    #[test]
    fn sequence_options_read_in_any_order() {
        // pg_dump's order, then sqlparser's.
        let options = sequence_options(
            "CREATE SEQUENCE public.t_id_seq AS integer START WITH 1 INCREMENT BY 1 NO MINVALUE NO MAXVALUE CACHE 1",
        );
        assert_eq!(options.len(), 5);
        assert_eq!(
            options,
            sequence_options(
                "CREATE SEQUENCE public.t_id_seq AS integer INCREMENT BY 1 NO MINVALUE NO MAXVALUE START WITH 1 CACHE 1"
            )
        );
        assert_eq!(
            sequence_options(
                "CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY (START WITH 5 INCREMENT BY 2))"
            ),
            sequence_options(
                "CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY (INCREMENT BY 2 START WITH 5))"
            ),
        );
        let dialect = SluiceDialect::default();
        assert!(parsed(&dialect, "CREATE SEQUENCE s START").starts_with("error"));
        assert!(parsed(&dialect, "CREATE SEQUENCE s BOGUS 1").starts_with("error"));
    }

    #[test]
    fn reports_postgresql_to_the_parser() {
        let dialect: &dyn Dialect = &SluiceDialect::default();
        assert!(dialect.is::<PostgreSqlDialect>());
    }
}
