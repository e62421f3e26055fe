//! Which tables a statement reads and writes, from its parse tree.
//!
//! The cache key of a query includes the current *generation* of every
//! table it reads, and a write bumps the generations of the tables it
//! writes; so this analysis decides correctness. When in doubt it says so
//! ([`Analysis::Unknown`]), and the caller runs the statement uncached and,
//! if it may write, invalidates everything: a stale result is never served.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_relations, CopySource, FromTable, ObjectName, Query, SetExpr, Statement, TableFactor,
    TableObject, Visit, Visitor,
};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

/// The SQL dialect, shared with larder-views and larder-sql (one type for
/// the whole change-capture story: [`larder_changes::Dialect`]).
pub use larder_changes::Dialect as SqlDialect;

/// sqlparser's dialect for `d`.
pub(crate) fn parser_of(d: SqlDialect) -> Box<dyn Dialect> {
    match d {
        SqlDialect::MySql => Box::new(MySqlDialect {}),
        SqlDialect::Sqlite => Box::new(SQLiteDialect {}),
        _ => Box::new(PostgreSqlDialect {}),
    }
}

/// What a statement does to tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Analysis {
    /// A query that only reads these tables: cacheable.
    Read(BTreeSet<String>),
    /// A statement that writes (and may read) these tables: run it, then
    /// bump the generations of `writes`.
    Write {
        /// Tables whose contents change.
        writes: BTreeSet<String>,
    },
    /// Not understood, or not cacheable (locking reads, volatile functions,
    /// session statements): run it uncached; if `may_write`, invalidate
    /// every table.
    Unknown {
        /// Whether the statement might change data.
        may_write: bool,
        /// Why, for logs.
        reason: String,
    },
}

/// Tables, views and functions a cached query depends on beyond its text.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Database views and the tables they read: a query on a view depends
    /// on those tables.
    pub views: BTreeMap<String, BTreeSet<String>>,
    /// Functions of the application's database declared safe to cache, and
    /// the tables each reads (empty: pure). A query may call only these and
    /// the built-in [`PURE_FUNCTIONS`]; any other function call makes it
    /// uncacheable, since it may read tables (or the clock) unseen.
    pub functions: BTreeMap<String, BTreeSet<String>>,
}

impl Schema {
    /// Declares that `view` reads `tables`.
    pub fn view<I, S>(mut self, view: &str, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.views.insert(
            normalize(view),
            tables.into_iter().map(|t| normalize(t.as_ref())).collect(),
        );
        self
    }

    /// Declares that `function` depends only on its arguments (SQL
    /// `IMMUTABLE`): queries calling it are cacheable.
    pub fn pure_function(self, function: &str) -> Self {
        self.function_reading(function, std::iter::empty::<&str>())
    }

    /// Declares that `function` reads `tables` (and nothing else, nor the
    /// clock): queries calling it are cacheable and depend on those tables,
    /// e.g. `SELECT order_count($1)` on `orders`.
    pub fn function_reading<I, S>(mut self, function: &str, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.functions.insert(
            normalize(function),
            tables.into_iter().map(|t| normalize(t.as_ref())).collect(),
        );
        self
    }
}

/// Built-in functions a cached query may call: aggregates, window
/// functions and scalar functions whose result depends only on their
/// arguments, in PostgreSQL, MySQL/MariaDB and SQLite. Anything else (a
/// function of the application's, `setval`, `pg_sleep`, `now()`, …) makes a
/// query uncacheable unless declared with [`Schema::pure_function`] or
/// [`Schema::function_reading`].
pub const PURE_FUNCTIONS: &[&str] = &[
    // aggregates and window functions
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "total",
    "string_agg",
    "array_agg",
    "group_concat",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_group_array",
    "json_group_object",
    "json_arrayagg",
    "json_objectagg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // conditionals
    "coalesce",
    "nullif",
    "ifnull",
    "iif",
    "if",
    "greatest",
    "least",
    "nvl",
    // strings
    "lower",
    "upper",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substr",
    "substring",
    "trim",
    "ltrim",
    "rtrim",
    "btrim",
    "replace",
    "concat",
    "concat_ws",
    "left",
    "right",
    "lpad",
    "rpad",
    "position",
    "strpos",
    "instr",
    "locate",
    "reverse",
    "repeat",
    "split_part",
    "starts_with",
    "initcap",
    "ascii",
    "chr",
    "char",
    "md5",
    "hex",
    "unhex",
    "quote",
    "quote_ident",
    "quote_literal",
    "format",
    "regexp_replace",
    "regexp_like",
    "regexp_substr",
    "translate",
    "printf",
    "unicode",
    "like",
    "glob",
    "to_hex",
    "encode",
    "decode",
    "sha1",
    "sha2",
    // numbers
    "abs",
    "round",
    "floor",
    "ceil",
    "ceiling",
    "trunc",
    "truncate",
    "mod",
    "power",
    "pow",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log10",
    "log2",
    "sign",
    "div",
    "degrees",
    "radians",
    "pi",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "width_bucket",
    // json and arrays
    "json_extract",
    "json_unquote",
    "json_object",
    "json_array",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "to_json",
    "to_jsonb",
    "json_array_length",
    "jsonb_array_length",
    "json_typeof",
    "jsonb_typeof",
    "json_valid",
    "jsonb_extract_path",
    "json_extract_path",
    "jsonb_extract_path_text",
    "json_extract_path_text",
    "jsonb_set",
    "json_type",
    "json_quote",
    "array_length",
    "cardinality",
    "array_to_string",
    "string_to_array",
    "array_position",
    "array_remove",
    "array_append",
    "array_prepend",
    "array_cat",
    "unnest",
    "generate_series",
    "json_each",
    "jsonb_each",
    "json_array_elements",
    "jsonb_array_elements",
    // types
    "typeof",
    "cast",
    "convert",
];

/// Functions whose result changes without any table changing (named in
/// the reason a query is not cached; every function outside the pure list
/// is refused anyway).
const VOLATILE: &[&str] = &[
    "now",
    "random",
    "rand",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "localtime",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "uuid",
    "uuid_short",
    "gen_random_uuid",
    "uuid_generate_v4",
    "sysdate",
    "pg_sleep",
    "sleep",
    "txid_current",
    "txid_current_snapshot",
    "pg_current_xact_id",
    "last_insert_id",
    "last_insert_rowid",
    "changes",
    "total_changes",
    "randomblob",
    "connection_id",
    "current_user",
    "session_user",
    "user",
    "database",
    "version",
    "found_rows",
    "row_count",
    "unix_timestamp",
    "utc_timestamp",
    "curdate",
    "curtime",
    "datetime",
    "date",
    "time",
    "julianday",
    "strftime",
    "unixepoch",
];

/// A table name as keys use it: the last part of a qualified name,
/// lowercased (unquoted identifiers are case-insensitive in all three
/// databases; merging same-named tables of two schemas only invalidates
/// more, never less).
pub fn normalize(name: &str) -> String {
    name.rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']')
        .to_ascii_lowercase()
}

fn object_name(n: &ObjectName) -> String {
    normalize(&n.to_string())
}

/// Collects CTE names and nested writes, and notices what makes a query
/// uncacheable.
struct Scan<'s> {
    schema: &'s Schema,
    ctes: BTreeSet<String>,
    /// Names in FROM that are function calls, not tables.
    table_functions: BTreeSet<String>,
    /// Tables read by the declared functions the statement calls.
    function_reads: BTreeSet<String>,
    locking: bool,
    /// Why the statement is not cacheable, if it is not.
    uncacheable: Option<String>,
    /// Statements seen so far (the first is the statement itself).
    statements: usize,
    /// Tables written by statements nested in this one (data-modifying
    /// CTEs, `SELECT … INTO`).
    nested_writes: BTreeSet<String>,
    /// A nested statement that may write, whose tables are not known.
    nested_unknown: Option<String>,
}

impl<'s> Scan<'s> {
    fn new(schema: &'s Schema) -> Self {
        Scan {
            schema,
            ctes: BTreeSet::new(),
            table_functions: BTreeSet::new(),
            function_reads: BTreeSet::new(),
            locking: false,
            uncacheable: None,
            statements: 0,
            nested_writes: BTreeSet::new(),
            nested_unknown: None,
        }
    }

    fn call(&mut self, name: String) {
        if let Some(tables) = self.schema.functions.get(&name) {
            self.function_reads.extend(tables.iter().cloned());
        } else if !PURE_FUNCTIONS.contains(&name.as_str()) && self.uncacheable.is_none() {
            self.uncacheable = Some(if VOLATILE.contains(&name.as_str()) {
                format!("calls {name}(), whose result changes on its own")
            } else {
                format!(
                    "calls {name}(), not known to be pure (declare it with Schema::pure_function or Schema::function_reading)"
                )
            });
        }
    }

    fn select_into(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(sel) => {
                if let Some(into) = &sel.into {
                    self.nested_writes.insert(object_name(&into.name));
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.select_into(left);
                self.select_into(right);
            }
            _ => {}
        }
    }
}

impl Visitor for Scan<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.statements += 1;
        if self.statements > 1 && !matches!(stmt, Statement::Query(_)) {
            // A statement inside this one: `WITH d AS (DELETE … RETURNING
            // …) SELECT …` writes although it is a query.
            match writes_of(stmt) {
                Some(w) => self.nested_writes.extend(w),
                None => self.nested_unknown = Some(first_words(stmt)),
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.insert(normalize(&cte.alias.name.value));
            }
        }
        if !q.locks.is_empty() {
            self.locking = true;
        }
        self.select_into(&q.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        match f {
            TableFactor::Table {
                name, args, sample, ..
            } => {
                if sample.is_some() && self.uncacheable.is_none() {
                    self.uncacheable = Some("TABLESAMPLE picks different rows each time".into());
                }
                if args.is_some() {
                    let n = object_name(name);
                    self.table_functions.insert(n.clone());
                    self.call(n);
                }
            }
            TableFactor::Function { name, .. } => {
                let n = object_name(name);
                self.table_functions.insert(n.clone());
                self.call(n);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &sqlparser::ast::Expr) -> ControlFlow<()> {
        if let sqlparser::ast::Expr::Function(f) = e {
            self.call(object_name(&f.name));
        }
        ControlFlow::Continue(())
    }
}

fn reads_of(stmt: &Statement, scan: &Scan, schema: &Schema) -> BTreeSet<String> {
    let mut reads = scan.function_reads.clone();
    let _ = visit_relations(stmt, |rel| {
        let n = object_name(rel);
        if !scan.ctes.contains(&n) && !scan.table_functions.contains(&n) {
            reads.insert(n);
        }
        ControlFlow::<()>::Continue(())
    });
    let mut expanded = BTreeSet::new();
    for t in reads {
        match schema.views.get(&t) {
            Some(tables) => expanded.extend(tables.iter().cloned()),
            None => {
                expanded.insert(t);
            }
        }
    }
    expanded
}

fn table_factor_name(f: &TableFactor) -> Option<String> {
    match f {
        TableFactor::Table { name, .. } => Some(object_name(name)),
        _ => None,
    }
}

/// The tables one statement writes, or `None` when it is not a write we
/// understand.
fn writes_of(stmt: &Statement) -> Option<BTreeSet<String>> {
    let mut w = BTreeSet::new();
    match stmt {
        Statement::Insert(i) => match &i.table {
            TableObject::TableName(n) => {
                w.insert(object_name(n));
            }
            TableObject::TableFunction(_) => return None,
        },
        Statement::Update { table, .. } => {
            w.insert(table_factor_name(&table.relation)?);
        }
        Statement::Delete(d) => {
            let from = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            if d.tables.is_empty() {
                for t in from {
                    w.insert(table_factor_name(&t.relation)?);
                }
            } else {
                // MySQL multi-table DELETE t1, t2 FROM …: the names may be
                // aliases of the tables in FROM.
                let mut aliases = BTreeMap::new();
                for t in from {
                    for f in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation))
                    {
                        if let TableFactor::Table {
                            name,
                            alias: Some(a),
                            ..
                        } = f
                        {
                            aliases.insert(normalize(&a.name.value), object_name(name));
                        }
                    }
                }
                for n in &d.tables {
                    let n = object_name(n);
                    w.insert(aliases.get(&n).cloned().unwrap_or(n));
                }
            }
        }
        Statement::Merge { table, .. } => {
            w.insert(table_factor_name(table)?);
        }
        Statement::Copy {
            source: CopySource::Table { table_name, .. },
            to: false,
            ..
        } => {
            w.insert(object_name(table_name));
        }
        Statement::LoadData { table_name, .. } => {
            w.insert(object_name(table_name));
        }
        Statement::Truncate { table_names, .. } => {
            for t in table_names {
                w.insert(object_name(&t.name));
            }
        }
        Statement::CreateTable(c) => {
            w.insert(object_name(&c.name));
        }
        Statement::AlterTable { name, .. } => {
            w.insert(object_name(name));
        }
        Statement::Drop { names, .. } => {
            for n in names {
                w.insert(object_name(n));
            }
        }
        Statement::CreateIndex(c) => {
            w.insert(object_name(&c.table_name));
        }
        _ => return None,
    }
    Some(w)
}

/// Analyzes `sql` (one or more statements).
pub fn analyze(sql: &str, dialect: SqlDialect, schema: &Schema) -> Analysis {
    let statements = match Parser::parse_sql(&*parser_of(dialect), sql) {
        Ok(s) => s,
        Err(e) => {
            return Analysis::Unknown {
                may_write: true,
                reason: format!("not parsed: {e}"),
            }
        }
    };
    if statements.is_empty() {
        return Analysis::Unknown {
            may_write: false,
            reason: "no statement".into(),
        };
    }
    let mut reads = BTreeSet::new();
    let mut writes = BTreeSet::new();
    let mut any_write = false;
    for stmt in &statements {
        let mut scan = Scan::new(schema);
        let _ = stmt.visit(&mut scan);
        if let Some(what) = scan.nested_unknown.take() {
            return Analysis::Unknown {
                may_write: true,
                reason: format!("a nested statement not understood: {what}"),
            };
        }
        if !scan.nested_writes.is_empty() {
            any_write = true;
            writes.append(&mut scan.nested_writes);
        }
        match stmt {
            Statement::Query(_) => {
                if any_write {
                    // Written by a nested statement: never a cached read.
                    continue;
                }
                if scan.locking {
                    return Analysis::Unknown {
                        may_write: false,
                        reason: "a locking read (FOR UPDATE/SHARE) is not cached".into(),
                    };
                }
                if let Some(why) = scan.uncacheable {
                    return Analysis::Unknown {
                        may_write: false,
                        reason: why,
                    };
                }
                reads.extend(reads_of(stmt, &scan, schema));
            }
            Statement::Copy { to: true, .. } => {
                return Analysis::Unknown {
                    may_write: false,
                    reason: "COPY … TO is not cached".into(),
                }
            }
            other => match writes_of(other) {
                Some(w) => {
                    any_write = true;
                    writes.extend(w);
                }
                None => {
                    return Analysis::Unknown {
                        may_write: true,
                        reason: format!("statement kind not understood: {}", first_words(other)),
                    }
                }
            },
        }
    }
    if any_write {
        Analysis::Write { writes }
    } else {
        Analysis::Read(reads)
    }
}

fn first_words(stmt: &Statement) -> String {
    stmt.to_string()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(sql: &str) -> Vec<String> {
        match analyze(sql, SqlDialect::Postgres, &Schema::default()) {
            Analysis::Read(r) => r.into_iter().collect(),
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn writes(sql: &str, d: SqlDialect) -> Vec<String> {
        match analyze(sql, d, &Schema::default()) {
            Analysis::Write { writes } => writes.into_iter().collect(),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn joins_subqueries_and_ctes() {
        assert_eq!(
            reads("SELECT p.id, u.name FROM post p JOIN users u ON u.id = p.author_id WHERE p.id = $1"),
            ["post", "users"]
        );
        assert_eq!(
            reads("SELECT * FROM post WHERE author_id IN (SELECT id FROM users WHERE banned)"),
            ["post", "users"]
        );
        assert_eq!(
            reads("WITH recent AS (SELECT * FROM post WHERE created > $1) SELECT count(*) FROM recent JOIN comment c ON c.post_id = recent.id"),
            ["comment", "post"],
            "a CTE's name is not a table"
        );
        assert_eq!(reads("SELECT * FROM public.Post"), ["post"]);
        assert_eq!(reads("SELECT \"Post\".id FROM \"Post\""), ["post"]);
        assert_eq!(
            reads("SELECT (SELECT count(*) FROM comment WHERE post_id = p.id) FROM post p"),
            ["comment", "post"]
        );
    }

    #[test]
    fn views_expand_to_their_tables() {
        let schema = Schema::default().view("post_stats", ["post", "comment"]);
        assert_eq!(
            analyze("SELECT * FROM post_stats", SqlDialect::Postgres, &schema),
            Analysis::Read(["comment", "post"].map(String::from).into())
        );
    }

    #[test]
    fn writes_name_their_tables() {
        let pg = SqlDialect::Postgres;
        assert_eq!(writes("INSERT INTO post (title) VALUES ($1)", pg), ["post"]);
        assert_eq!(
            writes(
                "UPDATE post SET title = $1 FROM users WHERE users.id = post.author_id",
                pg
            ),
            ["post"]
        );
        assert_eq!(writes("DELETE FROM comment WHERE id = $1", pg), ["comment"]);
        assert_eq!(writes("TRUNCATE post, comment", pg), ["comment", "post"]);
        assert_eq!(writes("ALTER TABLE post ADD COLUMN x int", pg), ["post"]);
        assert_eq!(writes("DROP TABLE post", pg), ["post"]);
        assert_eq!(writes("CREATE TABLE t (id int)", pg), ["t"]);
        assert_eq!(
            writes(
                "DELETE c, p FROM comment c JOIN post p ON p.id = c.post_id WHERE p.id = 1",
                SqlDialect::MySql
            ),
            ["comment", "post"],
            "the aliases' tables, not the aliases"
        );
        assert_eq!(
            writes("INSERT INTO post (id) VALUES (1); DELETE FROM comment", pg),
            ["comment", "post"]
        );
    }

    #[test]
    fn doubtful_statements_are_unknown() {
        let s = Schema::default();
        for (sql, may_write) in [
            ("SELECT * FROM post FOR UPDATE", false),
            ("SELECT now(), id FROM post", false),
            ("SELECT random()", false),
            ("SELEC oops", true),
            ("SET search_path = x", true),
            ("CALL refresh_everything()", true),
            // Functions outside the pure list may read tables or the clock.
            ("SELECT order_count($1)", false),
            ("SELECT setval('post_id_seq', 10)", false),
            ("SELECT pg_sleep(1)", false),
            ("SELECT clock_timestamp()", false),
            ("SELECT txid_current()", false),
            ("SELECT currval('post_id_seq')", false),
            ("SELECT * FROM post TABLESAMPLE BERNOULLI (10)", false),
            ("SELECT * FROM my_report($1)", false),
            ("COPY post TO STDOUT", false),
        ] {
            match analyze(sql, SqlDialect::Postgres, &s) {
                Analysis::Unknown { may_write: m, .. } => assert_eq!(m, may_write, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn nested_and_unusual_writes_are_writes() {
        let pg = SqlDialect::Postgres;
        assert_eq!(
            writes(
                "WITH j AS (DELETE FROM jobs WHERE id = (SELECT id FROM jobs ORDER BY id LIMIT 1) RETURNING *) SELECT * FROM j",
                pg
            ),
            ["jobs"],
            "a data-modifying CTE"
        );
        assert_eq!(
            writes(
                "WITH moved AS (DELETE FROM inbox RETURNING *) INSERT INTO archive SELECT * FROM moved",
                pg
            ),
            ["archive", "inbox"]
        );
        assert_eq!(
            writes(
                "WITH u AS (UPDATE post SET n = n + 1 RETURNING id) SELECT count(*) FROM u",
                pg
            ),
            ["post"]
        );
        assert_eq!(
            writes("SELECT * INTO post_copy FROM post", pg),
            ["post_copy"]
        );
        assert_eq!(writes("COPY post FROM '/tmp/posts.csv'", pg), ["post"]);
        assert_eq!(
            writes(
                "REPLACE INTO post (id, title) VALUES (1, 'x')",
                SqlDialect::MySql
            ),
            ["post"]
        );
        assert_eq!(
            writes(
                "INSERT OR REPLACE INTO post (id) VALUES (1)",
                SqlDialect::Sqlite
            ),
            ["post"]
        );
        assert_eq!(
            writes(
                "DELETE c FROM comment AS c JOIN post AS p ON p.id = c.post_id WHERE p.id = 1",
                SqlDialect::MySql
            ),
            ["comment"],
            "aliases name their tables"
        );
    }

    #[test]
    fn pure_and_declared_functions_are_cacheable() {
        assert_eq!(
            reads("SELECT count(*), max(id), lower(title), coalesce(x, 0) FROM post GROUP BY 3, 4"),
            ["post"]
        );
        assert_eq!(
            reads("SELECT g FROM generate_series(1, 10) AS g"),
            Vec::<String>::new()
        );
        let schema = Schema::default()
            .function_reading("order_count", ["orders"])
            .pure_function("slugify");
        assert_eq!(
            analyze(
                "SELECT order_count($1), slugify(name) FROM users",
                SqlDialect::Postgres,
                &schema
            ),
            Analysis::Read(["orders", "users"].map(String::from).into())
        );
    }
}
