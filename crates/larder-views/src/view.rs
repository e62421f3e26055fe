//! Declaring views: what a document is, how it is computed, and which
//! source changes affect which keys.

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::source::{row_json, Source};

type ComputeFn =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Option<Vec<u8>>, BoxError>> + Send + Sync>;
type KeysFn = Arc<dyn Fn() -> BoxFuture<'static, Result<Vec<String>, BoxError>> + Send + Sync>;
type MapFn = Arc<dyn Fn(&RowChange) -> Vec<String> + Send + Sync>;

/// A change to one row of a source table, as captured by the triggers:
/// the dependency columns of the old row (absent for an insert) and of the
/// new row (absent for a delete).
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// The table (lowercased).
    pub table: String,
    /// The old row's captured columns.
    pub old: Option<serde_json::Map<String, serde_json::Value>>,
    /// The new row's captured columns.
    pub new: Option<serde_json::Map<String, serde_json::Value>>,
}

impl RowChange {
    /// The distinct non-null values of `column` in the old and new row.
    pub fn values(&self, column: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for row in [&self.old, &self.new].into_iter().flatten() {
            if let Some(v) = row.get(column) {
                if !v.is_null() && !out.contains(v) {
                    out.push(v.clone());
                }
            }
        }
        out
    }
}

/// How changes to one source table map to the view keys they affect.
#[derive(Clone)]
pub struct Dependency {
    pub(crate) table: String,
    pub(crate) kind: DependencyKind,
}

#[derive(Clone)]
pub(crate) enum DependencyKind {
    Column(String),
    Lookup { column: String, query: String },
    Map { columns: Vec<String>, f: MapFn },
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Dependency");
        d.field("table", &self.table);
        match &self.kind {
            DependencyKind::Column(c) => d.field("column", c),
            DependencyKind::Lookup { column, query } => {
                d.field("column", column).field("lookup", query)
            }
            DependencyKind::Map { columns, .. } => d.field("columns", columns),
        };
        d.finish()
    }
}

impl Dependency {
    /// The key is the value of `column` in the changed row (old and new: a
    /// row that moves from key 1 to key 2 updates both). E.g. comments →
    /// post page: `Dependency::column("comments", "post_id")`.
    pub fn column(table: &str, column: &str) -> Dependency {
        Dependency {
            table: table.to_ascii_lowercase(),
            kind: DependencyKind::Column(column.to_owned()),
        }
    }

    /// "Every key where column = X": the keys are the first column of the
    /// rows `query` returns with the changed row's `column` value bound to
    /// `$1`. E.g. renaming a user reaches every post of theirs:
    /// `Dependency::lookup("users", "id", "SELECT id FROM posts WHERE author_id = $1")`.
    pub fn lookup(table: &str, column: &str, query: &str) -> Dependency {
        Dependency {
            table: table.to_ascii_lowercase(),
            kind: DependencyKind::Lookup {
                column: column.to_owned(),
                query: query.to_owned(),
            },
        }
    }

    /// Any mapping: `f` gets the change with `columns` captured and returns
    /// the keys.
    pub fn map<F>(table: &str, columns: &[&str], f: F) -> Dependency
    where
        F: Fn(&RowChange) -> Vec<String> + Send + Sync + 'static,
    {
        Dependency {
            table: table.to_ascii_lowercase(),
            kind: DependencyKind::Map {
                columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                f: Arc::new(f),
            },
        }
    }

    /// The source table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The columns the triggers must capture for this dependency.
    pub(crate) fn columns(&self) -> Vec<String> {
        match &self.kind {
            DependencyKind::Column(c) | DependencyKind::Lookup { column: c, .. } => vec![c.clone()],
            DependencyKind::Map { columns, .. } => columns.clone(),
        }
    }

    /// The keys `change` affects.
    pub(crate) async fn keys(
        &self,
        source: &Source,
        change: &RowChange,
    ) -> Result<Vec<String>, BoxError> {
        match &self.kind {
            DependencyKind::Column(c) => Ok(change
                .values(c)
                .iter()
                .filter_map(crate::source::json_key)
                .collect()),
            DependencyKind::Map { f, .. } => Ok(f(change)),
            DependencyKind::Lookup { column, query } => {
                let sql = source.dialect.adapt(query);
                let mut keys = Vec::new();
                for v in change.values(column) {
                    let mut args = sqlx::any::AnyArguments::default();
                    crate::source::bind_json(&mut args, &v)?;
                    let rows = sqlx::query_with(&sql, args).fetch_all(&source.pool).await?;
                    for r in rows {
                        let v = crate::source::column_json(&r, 0);
                        if let Some(k) = crate::source::json_key(&v) {
                            keys.push(k);
                        }
                    }
                }
                Ok(keys)
            }
        }
    }
}

/// The type of a SQL view's key, to bind it with the right SQL type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum KeyType {
    /// A 64-bit integer.
    #[default]
    Int,
    /// Text.
    Text,
}

/// One dependency of a [`SqlView`], as written in a views file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DependencySpec {
    /// The source table.
    pub table: String,
    /// The column whose value is the key, or is bound to `lookup`.
    pub column: String,
    /// A query returning the keys for a value of `column` (bound to `$1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
}

impl From<&DependencySpec> for Dependency {
    fn from(s: &DependencySpec) -> Dependency {
        match &s.lookup {
            Some(q) => Dependency::lookup(&s.table, &s.column, q),
            None => Dependency::column(&s.table, &s.column),
        }
    }
}

/// A view declared in SQL alone, so the CLI can run it without Rust code:
/// `query` returns the document's row for a key bound to `$1` (its columns
/// become the JSON document; no row = no document), `keys` lists every key.
///
/// ```toml
/// [views.post_page]
/// query = "SELECT p.id, p.title, u.name AS author FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1"
/// keys = "SELECT id FROM posts"
/// depends = [
///   { table = "posts", column = "id" },
///   { table = "users", column = "id", lookup = "SELECT id FROM posts WHERE author_id = $1" },
/// ]
/// ```
///
/// Placeholders are written `$1` on every database (rewritten to `?` on
/// MySQL and SQLite); each may appear once. Column types must be ones sqlx
/// `Any` carries (integers, floats, booleans, text, bytes): cast dates to
/// text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SqlView {
    /// The document query, with the key bound to `$1`.
    pub query: String,
    /// The query listing every key (for rebuild and verify).
    pub keys: String,
    /// How to bind the key.
    #[serde(default)]
    pub key_type: KeyType,
    /// Source tables and how their changes map to keys.
    #[serde(default)]
    pub depends: Vec<DependencySpec>,
    /// Compute and store a missing document on read.
    #[serde(default)]
    pub read_through: bool,
}

impl SqlView {
    /// A view from its document query and its keys query.
    pub fn new(query: &str, keys: &str) -> SqlView {
        SqlView {
            query: query.to_owned(),
            keys: keys.to_owned(),
            key_type: KeyType::Int,
            depends: Vec::new(),
            read_through: false,
        }
    }

    /// Sets the key type (default [`KeyType::Int`]).
    pub fn key_type(mut self, t: KeyType) -> SqlView {
        self.key_type = t;
        self
    }

    /// Adds a dependency: the key is `column` of a changed `table` row.
    pub fn depends_on(mut self, table: &str, column: &str) -> SqlView {
        self.depends.push(DependencySpec {
            table: table.to_owned(),
            column: column.to_owned(),
            lookup: None,
        });
        self
    }

    /// Adds a dependency through a lookup query (see [`Dependency::lookup`]).
    pub fn depends_via(mut self, table: &str, column: &str, lookup: &str) -> SqlView {
        self.depends.push(DependencySpec {
            table: table.to_owned(),
            column: column.to_owned(),
            lookup: Some(lookup.to_owned()),
        });
        self
    }

    /// Turns read-through on or off.
    pub fn read_through(mut self, on: bool) -> SqlView {
        self.read_through = on;
        self
    }

    /// The declaration under `name`.
    pub fn named(self, name: &str) -> ViewDef {
        ViewDef {
            name: name.to_owned(),
            deps: self.depends.iter().map(Dependency::from).collect(),
            read_through: self.read_through,
            compute: Compute::Sql {
                query: self.query,
                key_type: self.key_type,
            },
            keys: Some(Keys::Sql(self.keys)),
        }
    }
}

#[derive(Clone)]
pub(crate) enum Compute {
    Rust(ComputeFn),
    Sql { query: String, key_type: KeyType },
}

#[derive(Clone)]
pub(crate) enum Keys {
    Rust(KeysFn),
    Sql(String),
}

/// A view declaration with its types erased, as the registry keeps it.
/// Made from a [`View`] or a [`SqlView`].
#[derive(Clone)]
pub struct ViewDef {
    pub(crate) name: String,
    pub(crate) deps: Vec<Dependency>,
    pub(crate) read_through: bool,
    pub(crate) compute: Compute,
    pub(crate) keys: Option<Keys>,
}

impl std::fmt::Debug for ViewDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewDef")
            .field("name", &self.name)
            .field("deps", &self.deps)
            .field("read_through", &self.read_through)
            .finish_non_exhaustive()
    }
}

impl ViewDef {
    /// The view's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its dependencies.
    pub fn dependencies(&self) -> &[Dependency] {
        &self.deps
    }

    /// Computes the document for `key` (JSON), `None` if there is none.
    pub(crate) async fn compute(
        &self,
        source: &Source,
        key: &str,
    ) -> Result<Option<Vec<u8>>, BoxError> {
        match &self.compute {
            Compute::Rust(f) => f(key.to_owned()).await,
            Compute::Sql { query, key_type } => {
                let sql = source.dialect.adapt(query);
                let q = sqlx::query(&sql);
                let q = match key_type {
                    KeyType::Int => q.bind(
                        key.parse::<i64>()
                            .map_err(|e| format!("key {key:?} is not an integer: {e}"))?,
                    ),
                    KeyType::Text => q.bind(key.to_owned()),
                };
                let row = q.fetch_optional(&source.pool).await?;
                Ok(row.map(|r| serde_json::to_vec(&row_json(&r))).transpose()?)
            }
        }
    }

    /// Every key the view should have a document for.
    pub(crate) async fn all_keys(&self, source: &Source) -> Result<Vec<String>, BoxError> {
        match &self.keys {
            None => Err(format!(
                "view {:?} has no keys function: declare one with View::keys to rebuild or verify it",
                self.name
            )
            .into()),
            Some(Keys::Rust(f)) => f().await,
            Some(Keys::Sql(q)) => {
                let rows = sqlx::query(q).fetch_all(&source.pool).await?;
                Ok(rows
                    .iter()
                    .filter_map(|r| crate::source::json_key(&crate::source::column_json(r, 0)))
                    .collect())
            }
        }
    }
}

/// A view declared in Rust: documents of type `D` per key of type `K`.
///
/// ```no_run
/// # use larder_views::{View, Dependency, BoxError, Source};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct PostPage { title: String, comments: i64 }
///
/// # async fn declare() -> Result<(), larder_views::Error> {
/// let source = Source::connect("postgres://postgres@127.0.0.1/test", 8).await?;
/// let pool = source.pool().clone();
/// let view = View::<i64, PostPage>::new("post_page", move |id| {
///     let pool = pool.clone();
///     async move {
///         use sqlx::Row;
///         let row = sqlx::query("SELECT title, (SELECT COUNT(*) FROM comments WHERE post_id = $1) FROM posts WHERE id = $1")
///             .bind(id).fetch_optional(&pool).await?;
///         Ok::<_, BoxError>(row.map(|r| PostPage { title: r.get(0), comments: r.get(1) }))
///     }
/// })
/// .depends_on(Dependency::column("posts", "id"))
/// .depends_on(Dependency::column("comments", "post_id"));
/// # let _ = view;
/// # Ok(()) }
/// ```
pub struct View<K, D> {
    def: ViewDef,
    _types: PhantomData<fn(K) -> D>,
}

impl<K, D> std::fmt::Debug for View<K, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.def.fmt(f)
    }
}

impl<K, D> View<K, D>
where
    K: FromStr + Display + Send + 'static,
    K::Err: Display,
    D: Serialize + 'static,
{
    /// A view named `name` whose document for a key is what `compute`
    /// returns (`None`: the key has no document, e.g. the post was deleted).
    pub fn new<F, Fut>(name: &str, compute: F) -> View<K, D>
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<D>, BoxError>> + Send + 'static,
    {
        let compute: ComputeFn = Arc::new(move |key: String| match key.parse::<K>() {
            Ok(k) => compute(k)
                .map(|r| r.and_then(|d| Ok(d.map(|d| serde_json::to_vec(&d)).transpose()?)))
                .boxed(),
            Err(e) => {
                let msg = format!("key {key:?} does not parse: {e}");
                async move { Err(msg.into()) }.boxed()
            }
        });
        View {
            def: ViewDef {
                name: name.to_owned(),
                deps: Vec::new(),
                read_through: false,
                compute: Compute::Rust(compute),
                keys: None,
            },
            _types: PhantomData,
        }
    }

    /// Lists every key (needed by rebuild and verify).
    pub fn keys<F, Fut>(mut self, keys: F) -> View<K, D>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<K>, BoxError>> + Send + 'static,
    {
        self.def.keys = Some(Keys::Rust(Arc::new(move || {
            keys()
                .map(|r| r.map(|ks| ks.iter().map(ToString::to_string).collect()))
                .boxed()
        })));
        self
    }

    /// Adds a source dependency.
    pub fn depends_on(mut self, dep: Dependency) -> View<K, D> {
        self.def.deps.push(dep);
        self
    }

    /// Compute, store and count a missing document on read (default off:
    /// a missing document reads as `None`).
    pub fn read_through(mut self, on: bool) -> View<K, D> {
        self.def.read_through = on;
        self
    }
}

impl<K, D> From<View<K, D>> for ViewDef {
    fn from(v: View<K, D>) -> ViewDef {
        v.def
    }
}
