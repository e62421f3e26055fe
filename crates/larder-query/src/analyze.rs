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
    visit_relations, FromTable, ObjectName, Query, Statement, TableFactor, TableObject, Visit,
    Visitor,
};
use sqlparser::dialect::{Dialect, GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

/// The SQL dialect to parse with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqlDialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL / MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
    /// Anything else (a permissive parser).
    Generic,
}

impl SqlDialect {
    fn parser(self) -> Box<dyn Dialect> {
        match self {
            SqlDialect::Postgres => Box::new(PostgreSqlDialect {}),
            SqlDialect::MySql => Box::new(MySqlDialect {}),
            SqlDialect::Sqlite => Box::new(SQLiteDialect {}),
            SqlDialect::Generic => Box::new(GenericDialect {}),
        }
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
}

/// Functions whose result changes without any table changing: a query
/// calling one is not cached.
const VOLATILE: [&str; 12] = [
    "now",
    "random",
    "rand",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "clock_timestamp",
    "nextval",
    "uuid",
    "gen_random_uuid",
    "sysdate",
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

/// Collects CTE names, and notices what makes a query uncacheable.
#[derive(Default)]
struct Scan {
    ctes: BTreeSet<String>,
    locking: bool,
    volatile: Option<String>,
}

impl Visitor for Scan {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.insert(normalize(&cte.alias.name.value));
            }
        }
        if !q.locks.is_empty() {
            self.locking = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &sqlparser::ast::Expr) -> ControlFlow<()> {
        if let sqlparser::ast::Expr::Function(f) = e {
            let name = object_name(&f.name);
            if VOLATILE.contains(&name.as_str()) {
                self.volatile = Some(name);
            }
        }
        ControlFlow::Continue(())
    }
}

fn reads_of(stmt: &Statement, scan: &Scan, schema: &Schema) -> BTreeSet<String> {
    let mut reads = BTreeSet::new();
    let _ = visit_relations(stmt, |rel| {
        let n = object_name(rel);
        if !scan.ctes.contains(&n) {
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
                // MySQL multi-table DELETE t1, t2 FROM …
                for n in &d.tables {
                    w.insert(object_name(n));
                }
            }
        }
        Statement::Merge { table, .. } => {
            w.insert(table_factor_name(table)?);
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
    let statements = match Parser::parse_sql(&*dialect.parser(), sql) {
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
        let mut scan = Scan::default();
        let _ = stmt.visit(&mut scan);
        match stmt {
            Statement::Query(_) => {
                if scan.locking {
                    return Analysis::Unknown {
                        may_write: false,
                        reason: "a locking read (FOR UPDATE/SHARE) is not cached".into(),
                    };
                }
                if let Some(f) = scan.volatile {
                    return Analysis::Unknown {
                        may_write: false,
                        reason: format!("calls {f}(), whose result changes on its own"),
                    };
                }
                reads.extend(reads_of(stmt, &scan, schema));
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
            ["c", "p"]
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
        ] {
            match analyze(sql, SqlDialect::Postgres, &s) {
                Analysis::Unknown { may_write: m, .. } => assert_eq!(m, may_write, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}
