//! SQL text to [`Statement`]s: sqlparser's PostgreSQL dialect, the topic
//! statements ([`crate::stream_sql`]), the literal-INSERT shortcut
//! ([`crate::values_scan`]), and datafusion-pg-catalog's parser for
//! statements that read the system catalogs (it rewrites `::regclass` and
//! friends). Every parsed statement then gets the same checks and rewrites
//! ([`check_and_normalize`]): `$n` numbering, and built-in functions named
//! without `pg_catalog.`.

use std::fmt;
use std::sync::Arc;

use datafusion::sql::sqlparser::ast;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::error::{sqlstate, Error, Result};
use crate::names::identifier;
use crate::values_scan::MAX_PARAMETER_NUMBER;

/// `sql` with COPY's `FREEZE` and `HEADER` options spelled as sqlparser
/// reads them (TRUE or FALSE), or `None` if nothing needs it. PostgreSQL
/// takes any boolean spelling there (`on`, `off`, `1`, `0`, `yes`, `no`), and
/// pgbench writes `WITH (freeze on)`. Only tried after a syntax error, so
/// other statements never pay for it.
fn respell_copy_booleans(sql: &str) -> Option<String> {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = crate::dialect::SluiceDialect::default();
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .ok()?;
    let words: Vec<_> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let skip = usize::try_from(column).ok()?.checked_sub(1)?;
        Some(start + sql[start..].char_indices().nth(skip)?.0)
    };
    let mut in_copy = false;
    let mut edits = Vec::new();
    for (i, token) in words.iter().enumerate() {
        match &token.token {
            Token::SemiColon => in_copy = false,
            Token::Word(w) if i == 0 || matches!(words[i - 1].token, Token::SemiColon) => {
                in_copy = w.value.eq_ignore_ascii_case("copy");
            }
            Token::Word(w)
                if in_copy
                    && (w.value.eq_ignore_ascii_case("freeze")
                        || w.value.eq_ignore_ascii_case("header")) =>
            {
                let Some(next) = words.get(i + 1) else {
                    continue;
                };
                let spelled = match &next.token {
                    Token::Word(v) => v.value.to_ascii_lowercase(),
                    Token::Number(n, _) => n.clone(),
                    _ => continue,
                };
                let value = match spelled.as_str() {
                    "on" | "yes" | "1" => "TRUE",
                    "off" | "no" | "0" => "FALSE",
                    _ => continue,
                };
                let start = offset(next.span.start.line, next.span.start.column)?;
                let end = offset(next.span.end.line, next.span.end.column)?;
                edits.push((start, end, value));
            }
            _ => {}
        }
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = sql.to_string();
    for (start, end, value) in edits.into_iter().rev() {
        out.replace_range(start..end, value);
    }
    Some(out)
}

/// Parses `sql` into statements (see the module docs); `compat` parses the
/// statements that read system catalogs.
pub(crate) fn parse(sql: &str, compat: &PostgresCompatibilityParser) -> Result<Vec<Statement>> {
    if sql.trim().trim_matches(';').trim().is_empty() {
        return Ok(Vec::new());
    }
    let syntax_error = |e: datafusion::sql::sqlparser::parser::ParserError| {
        let message = e.to_string();
        let message = message
            .strip_prefix("sql parser error: ")
            .unwrap_or(&message)
            .to_string();
        Error::new(sqlstate::SYNTAX_ERROR, format!("syntax error: {message}"))
    };
    let dialect = crate::dialect::SluiceDialect::default();
    let parse = |sql: &str| {
        datafusion::sql::sqlparser::parser::Parser::new(&dialect)
            .with_recursion_limit(MAX_PARSE_DEPTH)
            .try_with_sql(sql)
            .and_then(|mut parser| parse_statements(&mut parser))
    };
    if let Some(statement) = scanned_insert(sql, parse)? {
        return Ok(vec![statement]);
    }
    let mut statements = match parse(sql) {
        Ok(statements) => statements,
        Err(e) => match respell_copy_booleans(sql) {
            Some(respelled) => parse(&respelled).map_err(syntax_error)?,
            None => return Err(syntax_error(e)),
        },
    };
    let reads_catalog = statements
        .iter()
        .any(|statement| match statement.kind.as_ref() {
            StatementKind::Sql(ast) => reads_system_catalog(ast),
            StatementKind::ScannedInsert(_) | StatementKind::Stream(_) => false,
        });
    if reads_catalog {
        statements = compat
            .parse(sql)
            .map_err(syntax_error)?
            .into_iter()
            .map(|ast| Statement {
                kind: Arc::new(StatementKind::Sql(ast)),
            })
            .collect();
    }
    for statement in &mut statements {
        if let Some(StatementKind::Sql(ast)) = Arc::get_mut(&mut statement.kind) {
            check_and_normalize(ast)?;
        }
    }
    Ok(statements)
}

/// One parsed SQL statement; cloning it shares the parse (a prepared
/// statement keeps it for re-planning, and a 10k-row INSERT's tree is large).
#[derive(Clone, Debug)]
pub struct Statement {
    pub(crate) kind: Arc<StatementKind>,
}

/// PostgreSQL's grammar as sqlparser knows it, or one of the topic
/// statements ([`crate::stream_sql`]).
// sqlparser's statement is large and always was held by value here; boxing
// it would cost an allocation per statement for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum StatementKind {
    Sql(ast::Statement),
    /// A multi-row INSERT of literals whose later rows were scanned, not parsed.
    ScannedInsert(Box<crate::values_scan::ScannedInsert>),
    Stream(Box<crate::stream_sql::StreamStatement>),
}

impl Statement {
    /// Whether the statement reads or writes rows and nothing else, so that
    /// it can share an implicit transaction block with others like it.
    /// DDL (not yet possible inside a block), COPY, settings and
    /// transaction control keep a multi-statement query statement by
    /// statement.
    pub fn reads_or_writes_rows_only(&self) -> bool {
        matches!(
            *self.kind,
            StatementKind::Sql(
                ast::Statement::Query(_)
                    | ast::Statement::Insert(_)
                    | ast::Statement::Update(_)
                    | ast::Statement::Delete(_)
            ) | StatementKind::ScannedInsert(_)
        )
    }

    /// The sqlparser statement, if this is one.
    pub(crate) fn sql(&self) -> Option<&ast::Statement> {
        match self.kind.as_ref() {
            StatementKind::Sql(ast) => Some(ast),
            StatementKind::ScannedInsert(scanned) => Some(scanned.whole()),
            StatementKind::Stream(_) => None,
        }
    }

    pub(crate) fn into_sql(self) -> Result<ast::Statement> {
        match Arc::unwrap_or_clone(self.kind) {
            StatementKind::Sql(ast) => Ok(ast),
            StatementKind::ScannedInsert(scanned) => Ok(scanned.into_whole()),
            StatementKind::Stream(stream) => Err(Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("{} is not allowed here", stream.tag()),
            )),
        }
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.as_ref() {
            StatementKind::Sql(ast) => write!(f, "{ast}"),
            StatementKind::ScannedInsert(scanned) => write!(f, "{scanned}"),
            StatementKind::Stream(stream) => write!(f, "{}", stream.tag()),
        }
    }
}

/// Nesting depth beyond which a statement is refused rather than risking the stack.
const MAX_PARSE_DEPTH: usize = 100;

/// sqlparser's `parse_statements`, plus PostgreSQL's `ABORT [WORK |
/// TRANSACTION] [AND [NO] CHAIN]` (a spelling of ROLLBACK the dialect lacks).
pub(crate) fn parse_statements(
    parser: &mut datafusion::sql::sqlparser::parser::Parser,
) -> std::result::Result<Vec<Statement>, datafusion::sql::sqlparser::parser::ParserError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::Token;
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token_ref().token == Token::EOF {
            return Ok(statements);
        }
        if let Some(stream) = crate::stream_sql::parse(parser)? {
            statements.push(Statement {
                kind: Arc::new(StatementKind::Stream(Box::new(stream))),
            });
            if !matches!(parser.peek_token_ref().token, Token::SemiColon | Token::EOF) {
                return parser.expected("end of statement", parser.peek_token());
            }
            continue;
        }
        let statement = if parser.parse_keyword(Keyword::ABORT) {
            let _ = parser.parse_one_of_keywords(&[Keyword::WORK, Keyword::TRANSACTION]);
            let chain = if parser.parse_keyword(Keyword::AND) {
                let no = parser.parse_keyword(Keyword::NO);
                parser.expect_keyword(Keyword::CHAIN)?;
                !no
            } else {
                false
            };
            ast::Statement::Rollback {
                chain,
                savepoint: None,
            }
        } else {
            parser.parse_statement()?
        };
        statements.push(Statement {
            kind: Arc::new(StatementKind::Sql(statement)),
        });
        if !matches!(parser.peek_token_ref().token, Token::SemiColon | Token::EOF) {
            return parser.expected("end of statement", parser.peek_token());
        }
    }
}

/// `sql` as one multi-row INSERT of literals, its rows after the first scanned rather than
/// parsed ([`crate::values_scan`]); `None` when it is not one, and `parse` reads it whole.
/// The parsed head gets [`Session::parse`]'s checks; the scanned rows need none, as they
/// name no relation and hold only `$n` that a Bind can supply (walking 10k rows with
/// sqlparser's visitors, which guard the stack at every node, costs about 5% of the load).
pub(crate) fn scanned_insert<E>(
    sql: &str,
    parse: impl Fn(&str) -> std::result::Result<Vec<Statement>, E>,
) -> Result<Option<Statement>> {
    let Some(split) = crate::values_scan::split(sql) else {
        return Ok(None);
    };
    let Ok(mut head) = parse(&sql[..split.head_end]) else {
        return Ok(None);
    };
    let Some(head) = head.pop().filter(|_| head.is_empty()) else {
        return Ok(None);
    };
    let Some(StatementKind::Sql(mut ast)) = Arc::into_inner(head.kind) else {
        return Ok(None);
    };
    if reads_system_catalog(&ast) {
        return Ok(None);
    }
    check_and_normalize(&mut ast)?;
    Ok(
        crate::values_scan::ScannedInsert::new(ast, split.rows).map(|scanned| Statement {
            kind: Arc::new(StatementKind::ScannedInsert(Box::new(scanned))),
        }),
    )
}

/// Whether a statement reads `pg_catalog` or `information_schema` relations.
pub(crate) fn reads_system_catalog(statement: &ast::Statement) -> bool {
    let mut found = false;
    let _ = ast::visit_relations(statement, |name: &ast::ObjectName| {
        let first = name
            .0
            .first()
            .map(|part| part.to_string().to_ascii_lowercase())
            .unwrap_or_default();
        if name.0.len() > 1
            && first != crate::system_views::SCHEMA_NAME
            && crate::catalog::SYSTEM_SCHEMAS.contains(&first.as_str())
            || name.0.len() == 1 && first.starts_with("pg_")
        {
            found = true;
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    });
    found
}

/// The checks and rewrites every parsed statement gets, in one walk of its
/// expressions:
/// - a `$n` that no Bind could supply (`$0`, or beyond
///   [`MAX_PARAMETER_NUMBER`]) is refused before anything is sized by it: the
///   parameter list of a statement is as long as its largest `$n`;
/// - a function called as `pg_catalog.f` becomes `f`: PostgreSQL's built-in
///   functions live in that schema and clients call them by either name
///   (SQLAlchemy's first query is `SELECT pg_catalog.version()`), while
///   DataFusion looks functions up by their bare name. Other qualifiers stay,
///   so a function of a schema that has none is still not found;
/// - the sequence functions' `'name'::regclass` argument becomes `'name'`:
///   they take the name as text (`crate::sequence`), and PostgreSQL's own
///   column defaults and pg_dump write the cast.
pub(crate) fn check_and_normalize(statement: &mut ast::Statement) -> Result<()> {
    let mut refused = None;
    let _ = ast::visit_expressions_mut(statement, |expr: &mut ast::Expr| {
        match expr {
            ast::Expr::Value(ast::ValueWithSpan {
                value: ast::Value::Placeholder(name),
                ..
            }) => {
                if let Some(digits) = name.strip_prefix('$') {
                    let number = digits.parse::<usize>().ok();
                    if !number.is_some_and(|n| (1..=MAX_PARAMETER_NUMBER).contains(&n)) {
                        refused = Some(name.clone());
                        return std::ops::ControlFlow::Break(());
                    }
                }
            }
            ast::Expr::Function(function) => {
                let parts = &mut function.name.0;
                let in_pg_catalog = parts.len() == 2
                    && parts[0]
                        .as_ident()
                        .is_some_and(|schema| identifier(schema) == "pg_catalog");
                if in_pg_catalog {
                    parts.remove(0);
                }
                let takes_sequence = parts.len() == 1
                    && parts[0].as_ident().is_some_and(|name| {
                        matches!(identifier(name).as_str(), "nextval" | "currval" | "setval")
                    });
                if takes_sequence {
                    strip_regclass_cast(&mut function.args);
                }
            }
            _ => {}
        }
        std::ops::ControlFlow::Continue(())
    });
    match refused {
        None => Ok(()),
        Some(name) => Err(Error::new(
            sqlstate::UNDEFINED_PARAMETER,
            format!("there is no parameter {name}"),
        )
        .with_detail(format!(
            "Parameters are numbered from $1 to ${MAX_PARAMETER_NUMBER}."
        ))),
    }
}

/// Drops a `::regclass` cast of a string literal first argument.
fn strip_regclass_cast(args: &mut ast::FunctionArguments) {
    let ast::FunctionArguments::List(list) = args else {
        return;
    };
    let Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(first))) = list.args.first_mut()
    else {
        return;
    };
    if let ast::Expr::Cast {
        expr,
        data_type: ast::DataType::Regclass,
        ..
    } = first
    {
        if matches!(
            expr.as_ref(),
            ast::Expr::Value(ast::ValueWithSpan {
                value: ast::Value::SingleQuotedString(_),
                ..
            })
        ) {
            *first = expr.as_ref().clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::respell_copy_booleans;

    #[test]
    fn sequence_functions_take_their_regclass_argument_as_text() {
        use datafusion::sql::sqlparser::parser::Parser;
        let dialect = crate::dialect::SluiceDialect::default();
        let normalized = |sql: &str| {
            let mut statement = Parser::parse_sql(&dialect, sql).unwrap().remove(0);
            super::check_and_normalize(&mut statement).unwrap();
            statement.to_string()
        };
        assert_eq!(
            normalized("SELECT pg_catalog.nextval('public.s'::regclass), currval('s'::regclass)"),
            "SELECT nextval('public.s'), currval('s')"
        );
        assert_eq!(
            normalized("CREATE TABLE t (id int DEFAULT nextval('t_id_seq'::regclass))"),
            "CREATE TABLE t (id INT DEFAULT nextval('t_id_seq'))"
        );
        // Other functions and other casts keep theirs.
        assert_eq!(
            normalized("SELECT f('s'::regclass), nextval(x::regclass)"),
            "SELECT f('s'::REGCLASS), nextval(x::REGCLASS)"
        );
    }

    #[test]
    fn copy_booleans_are_respelled_only_where_sqlparser_needs_it() {
        assert_eq!(
            respell_copy_booleans("copy t from stdin with (freeze on)").as_deref(),
            Some("copy t from stdin with (freeze TRUE)")
        );
        assert_eq!(
            respell_copy_booleans("SELECT 1;\nCOPY t TO STDOUT (FORMAT csv, HEADER 0, FREEZE yes)")
                .as_deref(),
            Some("SELECT 1;\nCOPY t TO STDOUT (FORMAT csv, HEADER FALSE, FREEZE TRUE)")
        );
        // Only COPY's options, and only boolean spellings.
        assert_eq!(respell_copy_booleans("SELECT header on FROM t"), None);
        assert_eq!(
            respell_copy_booleans("COPY t FROM STDIN (HEADER match)"),
            None
        );
        assert_eq!(
            respell_copy_booleans("COPY t FROM STDIN (HEADER TRUE)"),
            None
        );
        // Multi-byte text before the option keeps its place.
        assert_eq!(
            respell_copy_booleans("COPY \"tä\" FROM STDIN (FREEZE off)").as_deref(),
            Some("COPY \"tä\" FROM STDIN (FREEZE FALSE)")
        );
    }
}
