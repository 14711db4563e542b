//! The SQL dialect statements are parsed with: sqlparser's PostgreSQL dialect,
//! with one shortcut that changes no parse.
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
//! The wrapper forwards each method [`PostgreSqlDialect`] overrides and reports
//! PostgreSQL's type id, so the parser's `dialect_of!(… is PostgreSqlDialect)`
//! checks hold. When sqlparser is upgraded, compare the forwarded list with
//! `impl Dialect for PostgreSqlDialect` (the unit test below parses a corpus
//! with both dialects and catches a difference it exercises).

use std::any::TypeId;

use datafusion::sql::sqlparser::ast::Expr;
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
        ];
        for sql in corpus {
            assert_eq!(
                parsed(&SluiceDialect::default(), sql),
                parsed(&PostgreSqlDialect {}, sql),
                "{sql}"
            );
        }
    }

    #[test]
    fn reports_postgresql_to_the_parser() {
        let dialect: &dyn Dialect = &SluiceDialect::default();
        assert!(dialect.is::<PostgreSqlDialect>());
    }
}
