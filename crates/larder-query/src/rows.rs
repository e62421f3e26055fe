//! Row-level dependencies: which rows of a table a cached read can see.
//!
//! A read whose rows of table `T` are all constrained by `T.c = k` (or
//! `T.c IN (k1, k2, …)`) for integer constants `k` — a parameter or a
//! literal, also through join equalities such as `c.post_id = p.id AND
//! p.id = $1` — depends only on the rows of `T` whose `c` is one of those
//! values. Its key then uses one generation per *(T, c, k)* instead of the
//! table generation, and a write bumps the generations of the old and new
//! values of every column of the rows it touched (see `capture.rs`), so a
//! comment on post 7 no longer invalidates the cached comments of post 8.
//!
//! The analysis is conservative: a table is row-constrained only when it
//! appears exactly once in the statement, in the FROM clause of the
//! top-level SELECT, joined by inner or left joins, and the constraint is a
//! conjunct (never under OR or NOT). Anything else keeps the table
//! generation. Only integer constants qualify, because the database's own
//! comparison rules decide which stored values equal them, and for
//! integers those rules can be mirrored exactly (`canon_*` below); text
//! equality depends on collations (MySQL compares case- and
//! accent-insensitively) and is left to the table generation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, JoinConstraint, JoinOperator, Query, SetExpr,
    Statement, TableFactor, Value,
};

use crate::analyze::{normalize, SqlDialect};

/// A constant a constrained column is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Const {
    /// The parameter at this index (0-based) of the call.
    Param(usize),
    /// An integer literal in the SQL.
    Int(i64),
}

/// For each table the read sees only through an equality, the column and
/// the constants it equals (any of them).
pub(crate) type RowDeps = BTreeMap<String, (String, Vec<Const>)>;

/// What a stored value is, as far as equality with an integer constant
/// goes, under the database's comparison rules (see [`crate::CaptureRow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    /// Equal to exactly this integer (and to no other).
    Int(i64),
    /// Equal to no integer (NULL, text PostgreSQL will not compare with
    /// one, a fraction, a blob).
    NoInt,
    /// Could not tell: queries on this column must not trust any value.
    Unknown,
}

/// A float as an integer constant would see it.
pub(crate) fn canon_f64(f: f64) -> Canon {
    // i64 covers [-2^63, 2^63); both bounds are exact in f64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) {
        Canon::Int(f as i64)
    } else if f.is_nan() || f.is_finite() {
        // NaN equals nothing; a fraction equals no integer.
        Canon::NoInt
    } else {
        Canon::Unknown
    }
}

/// A value captured by a trigger as JSON (`json_build_object`,
/// `JSON_OBJECT`, `json_object`), as an integer constant compared with the
/// column would see it. JSON keeps numbers, text, booleans and NULL apart
/// but not the column's SQL type, so only what is certain is trusted:
///
/// - numbers are numbers in every dialect;
/// - NULL equals nothing;
/// - text: PostgreSQL never compares it with an integer; SQLite's rule is
///   [`canon_text`]'s; on MySQL a date, time, ENUM or SET column also
///   arrives as text and compares by its own rules, so it is `Unknown`;
/// - a boolean is PostgreSQL's `boolean` (never equal to an integer), or
///   a MySQL JSON column: `Unknown` there;
/// - arrays and objects are JSON columns: PostgreSQL refuses to compare
///   them, elsewhere `Unknown`.
pub(crate) fn canon_json(dialect: SqlDialect, v: &serde_json::Value) -> Canon {
    use serde_json::Value;
    match v {
        Value::Null => Canon::NoInt,
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Canon::Int(i),
            // Above i64::MAX: equal to no i64 constant.
            (None, Some(_), _) => Canon::NoInt,
            (None, None, Some(f)) => canon_f64(f),
            _ => Canon::Unknown,
        },
        Value::String(t) => match dialect {
            SqlDialect::MySql => Canon::Unknown,
            _ => canon_text(dialect, t),
        },
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => match dialect {
            SqlDialect::Postgres => Canon::NoInt,
            _ => Canon::Unknown,
        },
    }
}

/// Stored text compared with an integer constant.
///
/// - MySQL/MariaDB convert the string to a number: leading whitespace is
///   skipped, the longest numeric prefix is read, and a string without one
///   is 0 (`'5abc' = 5`, `'abc' = 0`).
/// - SQLite compares a TEXT value equal to an integer only when the column
///   has TEXT affinity and the text is the integer's rendering; treating
///   any text that parses as a number as that number is a superset.
/// - PostgreSQL does not compare text with integers at all (an error), so
///   text is never equal to an integer constant.
pub(crate) fn canon_text(dialect: SqlDialect, s: &str) -> Canon {
    match dialect {
        SqlDialect::Postgres => Canon::NoInt,
        SqlDialect::MySql => {
            let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
            let prefix = numeric_prefix(t);
            if prefix.is_empty() {
                return Canon::Int(0);
            }
            match prefix.parse::<i64>() {
                Ok(n) => Canon::Int(n),
                Err(_) => prefix.parse::<f64>().map_or(Canon::Unknown, canon_f64),
            }
        }
        _ => {
            let t = s.trim();
            match t.parse::<i64>() {
                Ok(n) => Canon::Int(n),
                Err(_) => match t.parse::<f64>() {
                    Ok(f) => canon_f64(f),
                    Err(_) => Canon::NoInt,
                },
            }
        }
    }
}

/// The longest prefix of `s` that reads as a decimal number
/// (`[+-]?digits[.digits][e[+-]digits]`).
fn numeric_prefix(s: &str) -> &str {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut end = if i > digits_start { i } else { 0 };
    if i < b.len() && b[i] == b'.' {
        let mut j = i + 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > i + 1 || i > digits_start {
            end = j;
            i = j;
        }
    }
    if end > 0 && i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let exp_start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > exp_start {
            end = j;
        }
    }
    &s[..end]
}

/// A term of an equality: a column of a FROM item, or a constant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Term {
    Column {
        item: usize,
        column: String,
    },
    Const(Const),
    /// A constant that does not qualify (text, a float, NULL, an
    /// expression): its class cannot be trusted.
    Poison,
}

/// Union-find over terms.
#[derive(Debug, Clone, Default)]
struct Classes {
    ids: HashMap<Term, usize>,
    parent: Vec<usize>,
    /// Constants listed by `IN` for a class root (merged on union).
    lists: HashMap<usize, Vec<Term>>,
}

impl Classes {
    fn id(&mut self, t: Term) -> usize {
        if let Some(&i) = self.ids.get(&t) {
            return i;
        }
        let i = self.parent.len();
        self.parent.push(i);
        self.ids.insert(t, i);
        i
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: Term, b: Term) {
        let (a, b) = (self.id(a), self.id(b));
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[rb] = ra;
            if let Some(mut l) = self.lists.remove(&rb) {
                self.lists.entry(ra).or_default().append(&mut l);
            }
        }
    }

    fn list(&mut self, a: Term, consts: Vec<Term>) {
        let a = self.id(a);
        let r = self.find(a);
        self.lists.entry(r).or_default().extend(consts);
    }

    /// The constants `t` equals, or `None` when it is not constrained to
    /// integer constants only.
    fn constants(&mut self, t: &Term) -> Option<Vec<Const>> {
        let i = *self.ids.get(t)?;
        let root = self.find(i);
        let mut out = BTreeSet::new();
        let members: Vec<Term> = self.ids.keys().cloned().collect();
        for m in members {
            let mi = self.ids[&m];
            if self.find(mi) != root {
                continue;
            }
            match m {
                Term::Const(c) => {
                    out.insert(c);
                }
                Term::Poison => return None,
                Term::Column { .. } => {}
            }
        }
        for m in self.lists.get(&root).cloned().unwrap_or_default() {
            match m {
                Term::Const(c) => {
                    out.insert(c);
                }
                _ => return None,
            }
        }
        (!out.is_empty()).then(|| out.into_iter().collect())
    }
}

/// One table of the top-level FROM clause.
struct Item {
    table: String,
    /// The name columns are qualified with (alias or table name).
    qualifier: String,
    /// `ON` conjuncts that constrain only this item (a LEFT JOIN's right
    /// side): `None` for inner items, whose conditions are global.
    local: Option<Vec<Expr>>,
}

/// Maps placeholders to parameter indexes.
pub(crate) struct Placeholders {
    /// For `?` placeholders: their start positions in order.
    question_marks: Vec<(u64, u64)>,
}

impl Placeholders {
    pub(crate) fn of(stmt: &Statement) -> Self {
        let mut question_marks = Vec::new();
        let _ = sqlparser::ast::visit_expressions(stmt, |e| {
            if let Expr::Value(v) = e {
                if matches!(&v.value, Value::Placeholder(p) if p == "?") {
                    question_marks.push((v.span.start.line, v.span.start.column));
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        question_marks.sort_unstable();
        Placeholders { question_marks }
    }

    pub(crate) fn index(&self, p: &str, at: (u64, u64)) -> Option<usize> {
        if p == "?" {
            if at.0 == 0 {
                return None; // no position: cannot tell which parameter
            }
            return self.question_marks.binary_search(&at).ok();
        }
        let n = p.strip_prefix('$').or_else(|| p.strip_prefix('?'))?;
        let n: usize = n.parse().ok()?;
        n.checked_sub(1)
    }
}

fn is_integer_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int(_)
            | DataType::Integer(_)
            | DataType::BigInt(_)
            | DataType::SmallInt(_)
            | DataType::TinyInt(_)
            | DataType::Int2(_)
            | DataType::Int4(_)
            | DataType::Int8(_)
            | DataType::Int64
            | DataType::Signed
            | DataType::SignedInteger
    )
}

/// The constant `e` is, if it is one: `Some(Term::Poison)` for constants
/// that do not qualify, `None` for expressions that are not constants.
fn constant(e: &Expr, ph: &Placeholders) -> Option<Term> {
    match e {
        Expr::Nested(inner) => constant(inner, ph),
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            format: None,
        } => match constant(expr, ph) {
            Some(Term::Const(c)) if is_integer_type(data_type) => Some(Term::Const(c)),
            Some(_) => Some(Term::Poison),
            None => None,
        },
        Expr::UnaryOp {
            op: sqlparser::ast::UnaryOperator::Minus,
            expr,
        } => match constant(expr, ph) {
            Some(Term::Const(Const::Int(n))) => Some(
                n.checked_neg()
                    .map_or(Term::Poison, |n| Term::Const(Const::Int(n))),
            ),
            Some(_) => Some(Term::Poison),
            None => None,
        },
        Expr::Value(v) => Some(match &v.value {
            Value::Number(n, false) => n
                .parse::<i64>()
                .map_or(Term::Poison, |n| Term::Const(Const::Int(n))),
            Value::Placeholder(p) => ph
                .index(p, (v.span.start.line, v.span.start.column))
                .map_or(Term::Poison, |i| Term::Const(Const::Param(i))),
            _ => Term::Poison,
        }),
        _ => None,
    }
}

/// Splits `e` into its top-level AND conjuncts.
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

/// The FROM item and column `e` names, if it names one unambiguously.
fn column(e: &Expr, items: &[Item]) -> Option<Term> {
    let (qualifier, name) = match e {
        Expr::Nested(inner) => return column(inner, items),
        Expr::Identifier(id) => (None, id.value.as_str()),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => (
            Some(normalize(&parts[parts.len() - 2].value)),
            parts[parts.len() - 1].value.as_str(),
        ),
        _ => return None,
    };
    let item = match qualifier {
        Some(q) => items.iter().position(|i| i.qualifier == q)?,
        None if items.len() == 1 => 0,
        // An unqualified column of a join could belong to any item.
        None => return None,
    };
    Some(Term::Column {
        item,
        column: normalize(name),
    })
}

/// Adds the equalities of `conds` to `classes`.
fn add_equalities(conds: &[&Expr], items: &[Item], ph: &Placeholders, classes: &mut Classes) {
    for c in conds {
        match c {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                let l = column(left, items).or_else(|| constant(left, ph));
                let r = column(right, items).or_else(|| constant(right, ph));
                if let (Some(l), Some(r)) = (l, r) {
                    classes.union(l, r);
                }
            }
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                if let Some(col) = column(expr, items) {
                    let consts: Vec<Term> = list
                        .iter()
                        .map(|e| constant(e, ph).unwrap_or(Term::Poison))
                        .collect();
                    classes.list(col, consts);
                }
            }
            _ => {}
        }
    }
}

fn table_item(f: &TableFactor) -> Option<(String, String)> {
    match f {
        TableFactor::Table {
            name,
            alias,
            args: None,
            sample: None,
            ..
        } => {
            let table = normalize(&name.to_string());
            let qualifier = match alias {
                Some(a) => normalize(&a.name.value),
                None => table.clone(),
            };
            Some((table, qualifier))
        }
        _ => None,
    }
}

/// The row-level dependencies of a read statement whose tables (views
/// expanded) are `reads`; `appearances` counts how often each table name
/// occurs anywhere in the statement.
pub(crate) fn row_deps(
    stmt: &Statement,
    appearances: &BTreeMap<String, usize>,
    views: &BTreeMap<String, BTreeSet<String>>,
) -> RowDeps {
    let Statement::Query(q) = stmt else {
        return RowDeps::new();
    };
    let ph = Placeholders::of(stmt);
    query_deps(q, appearances, views, &ph).unwrap_or_default()
}

fn query_deps(
    q: &Query,
    appearances: &BTreeMap<String, usize>,
    views: &BTreeMap<String, BTreeSet<String>>,
    ph: &Placeholders,
) -> Option<RowDeps> {
    let SetExpr::Select(sel) = &*q.body else {
        return None;
    };
    let mut items = Vec::new();
    let mut global: Vec<&Expr> = Vec::new();
    for twj in &sel.from {
        let (table, qualifier) = table_item(&twj.relation)?;
        items.push(Item {
            table,
            qualifier,
            local: None,
        });
        for j in &twj.joins {
            let (table, qualifier) = table_item(&j.relation)?;
            let (on, local) = match &j.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) | JoinOperator::StraightJoin(c) => {
                    (c, false)
                }
                JoinOperator::CrossJoin(c) => (c, false),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (c, true),
                // Right and full joins preserve the other side, semi/anti
                // joins and APPLY are rare: table generations.
                _ => return None,
            };
            let on = match on {
                JoinConstraint::On(e) => Some(e),
                JoinConstraint::None => None,
                // USING / NATURAL compare columns we would have to infer.
                _ => None,
            };
            let mut conds = Vec::new();
            if let Some(e) = on {
                conjuncts(e, &mut conds);
            }
            if local {
                items.push(Item {
                    table,
                    qualifier,
                    local: Some(conds.into_iter().cloned().collect()),
                });
            } else {
                items.push(Item {
                    table,
                    qualifier,
                    local: None,
                });
                global.extend(conds);
            }
        }
    }
    // Two items with one qualifier: column references are ambiguous.
    let qualifiers: BTreeSet<&str> = items.iter().map(|i| i.qualifier.as_str()).collect();
    if qualifiers.len() != items.len() {
        return None;
    }
    if let Some(w) = &sel.selection {
        conjuncts(w, &mut global);
    }
    let mut classes = Classes::default();
    add_equalities(&global, &items, ph, &mut classes);
    let mut deps = RowDeps::new();
    for (idx, item) in items.iter().enumerate() {
        if appearances.get(&item.table).copied().unwrap_or(0) != 1
            || views.contains_key(&item.table)
        {
            continue;
        }
        let mut classes = match &item.local {
            None => classes.clone(),
            Some(local) => {
                let mut c = classes.clone();
                let refs: Vec<&Expr> = local.iter().collect();
                add_equalities(&refs, &items, ph, &mut c);
                c
            }
        };
        // The first column of this item constrained to integer constants.
        let mut columns: Vec<String> = classes
            .ids
            .keys()
            .filter_map(|t| match t {
                Term::Column { item, column } if *item == idx => Some(column.clone()),
                _ => None,
            })
            .collect();
        columns.sort();
        for column in columns {
            let t = Term::Column {
                item: idx,
                column: column.clone(),
            };
            if let Some(consts) = classes.constants(&t) {
                // Prefer the column with the fewest values.
                let better = deps
                    .get(&item.table)
                    .is_none_or(|(_, cur): &(String, Vec<Const>)| consts.len() < cur.len());
                if better {
                    deps.insert(item.table.clone(), (column, consts));
                }
            }
        }
    }
    Some(deps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::parser::Parser;

    fn deps(sql: &str, dialect: SqlDialect) -> Vec<(String, String, Vec<Const>)> {
        let stmt = Parser::parse_sql(&*crate::analyze::parser_of(dialect), sql)
            .unwrap()
            .remove(0);
        let mut appearances = BTreeMap::new();
        let _ = sqlparser::ast::visit_relations(&stmt, |r| {
            *appearances.entry(normalize(&r.to_string())).or_insert(0) += 1;
            std::ops::ControlFlow::<()>::Continue(())
        });
        row_deps(&stmt, &appearances, &BTreeMap::new())
            .into_iter()
            .map(|(t, (c, k))| (t, c, k))
            .collect()
    }

    fn one(t: &str, c: &str, k: &[Const]) -> (String, String, Vec<Const>) {
        (t.into(), c.into(), k.to_vec())
    }

    use Const::{Int, Param};

    #[test]
    fn equalities_to_parameters_and_literals() {
        let pg = SqlDialect::Postgres;
        assert_eq!(
            deps("SELECT * FROM comments WHERE post_id = $1", pg),
            [one("comments", "post_id", &[Param(0)])]
        );
        assert_eq!(
            deps(
                "SELECT * FROM comments WHERE 7 = post_id AND body <> 'x'",
                pg
            ),
            [one("comments", "post_id", &[Int(7)])]
        );
        assert_eq!(
            deps("SELECT count(*) FROM comments c WHERE (c.post_id = $2::bigint) ORDER BY 1 LIMIT $1", pg),
            [one("comments", "post_id", &[Param(1)])]
        );
        assert_eq!(
            deps("SELECT * FROM comments WHERE post_id IN ($1, 3, -4)", pg),
            [one("comments", "post_id", &[Param(0), Int(-4), Int(3)])]
        );
    }

    #[test]
    fn question_marks_count_in_text_order() {
        assert_eq!(
            deps(
                "SELECT ?, body FROM comments WHERE author = ? AND post_id = ?",
                SqlDialect::MySql
            ),
            [one("comments", "author", &[Param(1)])],
            "author and post_id have one value each; the first by name wins"
        );
        assert_eq!(
            deps(
                "SELECT * FROM comments WHERE post_id = ?2",
                SqlDialect::Sqlite
            ),
            [one("comments", "post_id", &[Param(1)])]
        );
    }

    #[test]
    fn equalities_carry_through_joins() {
        let pg = SqlDialect::Postgres;
        assert_eq!(
            deps(
                "SELECT c.* FROM comments c JOIN posts p ON c.post_id = p.id WHERE p.id = $1",
                pg
            ),
            [
                one("comments", "post_id", &[Param(0)]),
                one("posts", "id", &[Param(0)])
            ]
        );
        // A LEFT JOIN's ON constrains its right side only.
        assert_eq!(
            deps(
                "SELECT * FROM comments c LEFT JOIN users u ON u.id = c.author_id AND c.post_id = 5 WHERE c.id = $1",
                pg
            ),
            [one("comments", "id", &[Param(0)])]
        );
        assert_eq!(
            deps(
                "SELECT * FROM comments c LEFT JOIN users u ON u.id = c.author_id WHERE c.author_id = $1",
                pg
            ),
            [
                one("comments", "author_id", &[Param(0)]),
                one("users", "id", &[Param(0)])
            ]
        );
    }

    #[test]
    fn uncovered_shapes_keep_the_table_generation() {
        let pg = SqlDialect::Postgres;
        for sql in [
            "SELECT * FROM comments WHERE post_id = $1 OR id = 3",
            "SELECT * FROM comments WHERE post_id > $1",
            "SELECT * FROM comments WHERE post_id = 'x'",
            "SELECT * FROM comments WHERE post_id = 1.5",
            "SELECT * FROM comments WHERE NOT (post_id = $1)",
            "SELECT * FROM comments WHERE post_id IN (1, 'a')",
            "SELECT * FROM comments WHERE post_id NOT IN (1, 2)",
            "SELECT * FROM comments WHERE post_id = $1 UNION SELECT * FROM comments WHERE post_id = $2",
            "SELECT * FROM comments WHERE post_id = $1 AND id IN (SELECT id FROM comments)",
            "SELECT * FROM comments c RIGHT JOIN posts p ON c.post_id = p.id WHERE p.id = $1",
            "SELECT * FROM comments WHERE post_id = CAST($1 AS TEXT)",
            "SELECT * FROM comments, posts WHERE post_id = $1",
        ] {
            let d = deps(sql, pg);
            assert!(
                d.iter().all(|(t, _, _)| t != "comments"),
                "{sql}: {d:?}"
            );
        }
    }

    #[test]
    fn text_compared_with_integers() {
        use Canon::{Int as I, NoInt};
        let my = SqlDialect::MySql;
        assert_eq!(canon_text(my, "5abc"), I(5));
        assert_eq!(canon_text(my, "  -12"), I(-12));
        assert_eq!(canon_text(my, "abc"), I(0));
        assert_eq!(canon_text(my, "5.0x"), I(5));
        assert_eq!(canon_text(my, "5.5"), NoInt);
        assert_eq!(canon_text(my, "1e3"), I(1000));
        assert_eq!(canon_text(my, ".5"), NoInt);
        assert_eq!(canon_text(my, "e5"), I(0));
        assert_eq!(canon_text(SqlDialect::Sqlite, " 7 "), I(7));
        assert_eq!(canon_text(SqlDialect::Sqlite, "7a"), NoInt);
        assert_eq!(canon_text(SqlDialect::Postgres, "7"), NoInt);
        assert_eq!(canon_f64(3.0), I(3));
        assert_eq!(canon_f64(3.5), NoInt);
    }
}
