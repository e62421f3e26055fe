//! The rows an in-app write touches, so that it bumps only the
//! generations of the values it changed (see `rows.rs` for the reads).
//!
//! - `INSERT … [RETURNING *]`: the inserted rows, as stored.
//! - `DELETE … RETURNING *`: the deleted rows.
//! - `UPDATE`: the rows it will change are read first (`SELECT * … FOR
//!   UPDATE`, in the same transaction, so they cannot change meanwhile),
//!   then the update runs, with `RETURNING *` where the database has it
//!   (PostgreSQL, SQLite) and otherwise with the new values taken from the
//!   `SET` list. If the update touched more rows than were read (a row
//!   inserted by another transaction in between, possible under READ
//!   COMMITTED), the whole table is invalidated instead.
//!
//! Anything else (upserts, multi-table statements, statements that modify
//! through CTEs, `REPLACE`, DDL) invalidates the tables it writes, as
//! before.

use std::collections::BTreeSet;

use sqlparser::ast::{
    visit_expressions_mut, Assignment, AssignmentTarget, Expr, FromTable, OnConflictAction,
    OnInsert, Statement, TableObject, Value,
};
use sqlparser::parser::Parser;

use crate::analyze::{normalize, SqlDialect};
use crate::param::Param;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
use crate::rows::canon_text;
use crate::rows::{canon_f64, Canon};

/// How a write statement reports the rows it touched.
#[derive(Debug, Clone)]
pub(crate) enum WritePlan {
    /// Not understood row by row: bump the written tables' generations.
    Tables,
    /// Run `sql` (the statement with `RETURNING *`) and bump the values of
    /// the rows it returns.
    Returning {
        /// The table written.
        table: String,
        /// The statement with `RETURNING *` appended.
        sql: String,
    },
    /// Read the rows first, then update them.
    Update {
        /// The table written.
        table: String,
        /// `SELECT * FROM <table> WHERE <the update's condition>`.
        preread: String,
        /// For each parameter of `preread`, the index of the statement's
        /// parameter it is.
        preread_params: Vec<usize>,
        /// The update with `RETURNING *`, where the database has it.
        returning: Option<String>,
        /// Otherwise, what `SET` assigns to each column.
        set: Vec<(String, SetValue)>,
    },
}

/// A value an `UPDATE … SET` assigns.
#[derive(Debug, Clone)]
pub(crate) enum SetValue {
    /// The statement's parameter at this index.
    Param(usize),
    /// A constant.
    Canon(Canon),
}

/// The plan for one write statement.
pub(crate) fn plan(sql: &str, dialect: SqlDialect) -> WritePlan {
    plan_inner(sql, dialect).unwrap_or(WritePlan::Tables)
}

fn plan_inner(sql: &str, dialect: SqlDialect) -> Option<WritePlan> {
    // We append to the text: a trailing comment would swallow it.
    if sql.contains("--")
        || sql.contains("/*")
        || (dialect == SqlDialect::MySql && sql.contains('#'))
    {
        return None;
    }
    let mut statements = Parser::parse_sql(&*crate::analyze::parser_of(dialect), sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let stmt = statements.remove(0);
    let body = sql.trim_end().trim_end_matches(';').trim_end();
    let returning = format!("{body} RETURNING *");
    match &stmt {
        Statement::Insert(i) => {
            let TableObject::TableName(name) = &i.table else {
                return None;
            };
            let plain_on = match &i.on {
                None => true,
                Some(OnInsert::OnConflict(c)) => matches!(c.action, OnConflictAction::DoNothing),
                Some(_) => false,
            };
            // OR REPLACE deletes the conflicting rows unseen.
            let or_ok = match &i.or {
                None => true,
                Some(o) => matches!(o, sqlparser::ast::SqliteOnConflict::Ignore),
            };
            if !plain_on || !or_ok || i.replace_into || i.returning.is_some() || i.source.is_none()
            {
                return None;
            }
            Some(WritePlan::Returning {
                table: normalize(&name.to_string()),
                sql: returning,
            })
        }
        Statement::Delete(d) => {
            let from = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let ordered = !d.order_by.is_empty() || d.limit.is_some();
            if !d.tables.is_empty()
                || d.using.is_some()
                || d.returning.is_some()
                || from.len() != 1
                || !from[0].joins.is_empty()
                || (ordered && dialect != SqlDialect::MySql)
            {
                return None;
            }
            let sqlparser::ast::TableFactor::Table { name, .. } = &from[0].relation else {
                return None;
            };
            Some(WritePlan::Returning {
                table: normalize(&name.to_string()),
                sql: returning,
            })
        }
        Statement::Update {
            table,
            assignments,
            from: None,
            selection,
            returning: None,
            or: None,
            limit: None,
        } => {
            if !table.joins.is_empty() {
                return None;
            }
            let sqlparser::ast::TableFactor::Table { name, .. } = &table.relation else {
                return None;
            };
            let ph = crate::rows::Placeholders::of(&stmt);
            let (where_sql, preread_params) = match selection {
                None => (String::new(), Vec::new()),
                Some(w) => {
                    let (w, params) = renumber(w, &ph, dialect)?;
                    (format!(" WHERE {w}"), params)
                }
            };
            let lock = if dialect == SqlDialect::Sqlite {
                ""
            } else {
                " FOR UPDATE"
            };
            let preread = format!("SELECT * FROM {table}{where_sql}{lock}");
            let has_returning = matches!(dialect, SqlDialect::Postgres | SqlDialect::Sqlite);
            let set = if has_returning {
                Vec::new()
            } else {
                set_values(assignments, &ph)?
            };
            Some(WritePlan::Update {
                table: normalize(&name.to_string()),
                preread,
                preread_params,
                returning: has_returning.then_some(returning),
                set,
            })
        }
        _ => None,
    }
}

/// `w` with its placeholders renumbered from 1 (or kept as `?`), and the
/// statement parameter behind each.
fn renumber(
    w: &Expr,
    ph: &crate::rows::Placeholders,
    dialect: SqlDialect,
) -> Option<(String, Vec<usize>)> {
    let mut w = w.clone();
    let mut params: Vec<usize> = Vec::new();
    let mut ok = true;
    let _ = visit_expressions_mut(&mut w, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                match ph.index(p, (v.span.start.line, v.span.start.column)) {
                    Some(i) if p == "?" => params.push(i),
                    Some(i) => {
                        // Numbered: each distinct parameter once, in order.
                        let n = match params.iter().position(|&x| x == i) {
                            Some(n) => n,
                            None => {
                                params.push(i);
                                params.len() - 1
                            }
                        };
                        let prefix = if dialect == SqlDialect::Postgres {
                            "$"
                        } else {
                            "?"
                        };
                        v.value = Value::Placeholder(format!("{prefix}{}", n + 1));
                    }
                    None => ok = false,
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    ok.then(|| (w.to_string(), params))
}

fn set_values(
    assignments: &[Assignment],
    ph: &crate::rows::Placeholders,
) -> Option<Vec<(String, SetValue)>> {
    let mut out = Vec::new();
    for a in assignments {
        let AssignmentTarget::ColumnName(col) = &a.target else {
            return None;
        };
        let value = match &a.value {
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => ph
                    .index(p, (v.span.start.line, v.span.start.column))
                    .map_or(SetValue::Canon(Canon::Unknown), SetValue::Param),
                Value::Number(n, false) => {
                    SetValue::Canon(n.parse::<i64>().map_or(Canon::Unknown, Canon::Int))
                }
                Value::Null => SetValue::Canon(Canon::NoInt),
                _ => SetValue::Canon(Canon::Unknown),
            },
            // An expression (`n = n + 1`): its result is unknown here.
            _ => SetValue::Canon(Canon::Unknown),
        };
        out.push((normalize(&col.to_string()), value));
    }
    Some(out)
}

/// A parameter written into a column, as stored: only integers and NULL
/// are certain (a text or float parameter may be converted by the
/// column's type).
pub(crate) fn canon_written_param(p: &Param) -> Canon {
    match p {
        Param::Int(n) => Canon::Int(*n),
        Param::Null => Canon::NoInt,
        _ => Canon::Unknown,
    }
}

/// Reads the rows a write returned (`RETURNING *`) or that an update is
/// about to change, for row-level invalidation: each column's name and its
/// value as an integer constant compared with it would see it, under the
/// database's own comparison rules. Implemented for the rows of sqlx's
/// PostgreSQL, MySQL/MariaDB and SQLite drivers; applications do not call
/// it.
pub trait CaptureRow {
    /// Every column's name (lowercased) and value.
    fn captured(&self, dialect: SqlDialect) -> Vec<(String, Canon)>;
}

/// Every column of `row`: its lowercased name, and `canon(index, type
/// name)` of its value (NULL equals no integer; a value that cannot be
/// read could be anything).
fn each_column<R>(row: &R, canon: impl Fn(usize, &str) -> Canon) -> Vec<(String, Canon)>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
{
    use sqlx::{Column, TypeInfo, ValueRef};
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = match row.try_get_raw(i) {
                Ok(v) if v.is_null() => None,
                Ok(v) => Some(Ok(v.type_info().name().to_owned())),
                Err(_) => Some(Err(())),
            };
            let value = match ty {
                None => Canon::NoInt,
                Some(Ok(ty)) => canon(i, &ty),
                Some(Err(())) => Canon::Unknown,
            };
            (c.name().to_ascii_lowercase(), value)
        })
        .collect()
}

#[cfg(feature = "postgres")]
impl CaptureRow for sqlx::postgres::PgRow {
    fn captured(&self, _: SqlDialect) -> Vec<(String, Canon)> {
        use sqlx::Row;
        each_column(self, |i, ty| match ty {
            "INT2" => self
                .try_get::<i16, _>(i)
                .map_or(Canon::Unknown, |n| Canon::Int(n.into())),
            "INT4" => self
                .try_get::<i32, _>(i)
                .map_or(Canon::Unknown, |n| Canon::Int(n.into())),
            "INT8" => self.try_get::<i64, _>(i).map_or(Canon::Unknown, Canon::Int),
            "FLOAT4" => self
                .try_get::<f32, _>(i)
                .map_or(Canon::Unknown, |f| canon_f64(f.into())),
            "FLOAT8" => self.try_get::<f64, _>(i).map_or(Canon::Unknown, canon_f64),
            // PostgreSQL refuses to compare these with an integer.
            "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" | "BOOL" | "BYTEA" | "UUID"
            | "JSON" | "JSONB" | "TIMESTAMP" | "TIMESTAMPTZ" | "DATE" | "TIME" | "TIMETZ"
            | "INTERVAL" | "INET" | "CIDR" => Canon::NoInt,
            // NUMERIC, OID, domains, …: could equal an integer.
            _ => Canon::Unknown,
        })
    }
}

#[cfg(feature = "mysql")]
impl CaptureRow for sqlx::mysql::MySqlRow {
    fn captured(&self, dialect: SqlDialect) -> Vec<(String, Canon)> {
        use sqlx::Row;
        each_column(self, |i, ty| match ty {
            "BOOLEAN" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => {
                self.try_get::<i64, _>(i).map_or(Canon::Unknown, Canon::Int)
            }
            t if t.ends_with("UNSIGNED") => self.try_get::<u64, _>(i).map_or(Canon::Unknown, |n| {
                i64::try_from(n).map_or(Canon::NoInt, Canon::Int)
            }),
            "DOUBLE" => self.try_get::<f64, _>(i).map_or(Canon::Unknown, canon_f64),
            "FLOAT" => self
                .try_get::<f32, _>(i)
                .map_or(Canon::Unknown, |f| canon_f64(f.into())),
            "NULL" => Canon::NoInt,
            "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "BLOB"
            | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BINARY" | "VARBINARY" => {
                match self.try_get::<String, _>(i) {
                    Ok(s) => canon_text(dialect, &s),
                    Err(_) => self.try_get::<Vec<u8>, _>(i).map_or(Canon::Unknown, |b| {
                        canon_text(dialect, &String::from_utf8_lossy(&b))
                    }),
                }
            }
            // DECIMAL, dates (compared as numbers), ENUM (by
            // index), BIT, SET, YEAR: could equal an integer.
            _ => Canon::Unknown,
        })
    }
}

#[cfg(feature = "sqlite")]
impl CaptureRow for sqlx::sqlite::SqliteRow {
    fn captured(&self, dialect: SqlDialect) -> Vec<(String, Canon)> {
        use sqlx::Row;
        // SQLite types values, not columns: go by the value's class.
        each_column(self, |i, ty| match ty {
            "INTEGER" => self
                .try_get_unchecked::<i64, _>(i)
                .map_or(Canon::Unknown, Canon::Int),
            "REAL" => self
                .try_get_unchecked::<f64, _>(i)
                .map_or(Canon::Unknown, canon_f64),
            "TEXT" => self
                .try_get_unchecked::<String, _>(i)
                .map_or(Canon::Unknown, |s| canon_text(dialect, &s)),
            "BLOB" => Canon::NoInt,
            _ => Canon::Unknown,
        })
    }
}

/// The generation keys one touched row bumps: one per integer value, one
/// per column whose value could not be read as one.
pub(crate) fn row_keys(table: &str, values: &[(String, Canon)], out: &mut BTreeSet<String>) {
    for (column, canon) in values {
        match canon {
            Canon::Int(n) => {
                out.insert(crate::generations::value_key(table, column, *n));
            }
            Canon::Unknown => {
                out.insert(crate::generations::column_key(table, column));
            }
            Canon::NoInt => {}
        }
    }
}

/// Past this many generation keys a write bumps the table instead (one
/// key instead of thousands).
pub(crate) const MAX_ROW_KEYS: usize = 256;

/// What the row keys of one table's touched rows bump: them and the
/// table's any-row generation, or the table generation alone past
/// [`MAX_ROW_KEYS`].
pub(crate) fn table_keys(table: &str, mut keys: BTreeSet<String>) -> BTreeSet<String> {
    if keys.len() > MAX_ROW_KEYS {
        return [crate::generations::table_key(table)].into();
    }
    keys.insert(crate::generations::rows_key(table));
    keys
}

/// The generation keys a batch of row changes (a replicated transaction,
/// a read of the change log) bumps, gathered table by table.
#[derive(Debug, Default)]
pub(crate) struct TouchedKeys {
    rows: std::collections::BTreeMap<String, BTreeSet<String>>,
    tables: BTreeSet<String>,
}

impl TouchedKeys {
    /// A touched row of `table` with these values (old or new).
    pub(crate) fn row(&mut self, table: &str, values: &[(String, Canon)]) {
        row_keys(
            table,
            values,
            self.rows.entry(table.to_owned()).or_default(),
        );
    }

    /// All of `table` (TRUNCATE, an update without its old values, …).
    pub(crate) fn table(&mut self, table: &str) {
        self.tables.insert(table.to_owned());
    }

    /// The keys to bump.
    pub(crate) fn into_keys(self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (table, keys) in self.rows {
            if !self.tables.contains(&table) {
                out.extend(table_keys(&table, keys));
            }
        }
        out.extend(self.tables.iter().map(|t| crate::generations::table_key(t)));
        out
    }
}
