//! Template fragment caching (Django's `{% cache %}`) with minijinja: the
//! expensive sidebar is rendered once per user and cached; the page around
//! it is rendered on every request.
//!
//! ```text
//! cargo run -p larder --example fragments
//! ```

use std::time::Instant;

use larder::prelude::*;
use minijinja::{context, Environment, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = Cache::from_url("mem://?key_prefix=pages").await?;
    let mut env = Environment::new();
    env.add_template("page", "<main>{{ body }}</main>{{ sidebar }}")?;
    env.add_template(
        "sidebar",
        "<aside>{% for p in posts %}<a>{{ p }}</a>{% endfor %} for {{ user }}</aside>",
    )?;
    for user in ["ada", "ada", "grace"] {
        let started = Instant::now();
        // {% cache 500 sidebar user %} … {% endcache %}
        let sidebar = cache
            .fragment("sidebar", &[&user], Ttl::secs(500), || async {
                // The slow part: queries behind the fragment.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let posts = ["caching", "denormalization", "herds"];
                env.get_template("sidebar")?
                    .render(context! { posts, user })
            })
            .await?;
        let page = env.get_template("page")?.render(context! {
            body => "today's posts",
            // Already HTML: do not escape it again.
            sidebar => Value::from_safe_string(sidebar),
        })?;
        println!("{user}: {} ({:?})", page, started.elapsed());
    }
    // A change to what the fragment shows: drop it for that user.
    cache
        .delete(&larder::fragment_key("sidebar", &[&"ada"]))
        .await?;
    Ok(())
}
