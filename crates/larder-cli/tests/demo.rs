//! `larder demo` end to end over HTTP: pages from the HTTP cache, the query
//! cache and the views; writes that reach the pages (purge by tag, view
//! workers, a rename reaching every post of the user); the stats JSON and
//! the Prometheus endpoint.

mod common;

use std::time::Duration;

use common::*;

fn count_in(html: &str, what: &str) -> i64 {
    // "· N comments" / "· N likes" from the post page.
    let i = html
        .find(&format!(" {what} "))
        .unwrap_or_else(|| panic!("no {what} in {html}"));
    html[..i]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_demo_serves_pages_and_every_write_reaches_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_demo, url) = start_demo(dir.path(), &["--traffic", "0"]);

    let front = get(&format!("{url}/"));
    assert_eq!(front.status, 200);
    assert!(front.body.contains("Trending") && front.body.contains("Latest posts"));
    assert_eq!(front.header("x-larder-cache"), Some("MISS"));
    assert_eq!(
        get(&format!("{url}/")).header("x-larder-cache"),
        Some("HIT")
    );
    assert!(front.header("cache-tag").is_none(), "tags are stripped");

    let page = get(&format!("{url}/posts/7"));
    assert_eq!(page.status, 200, "{}", page.body);
    let comments = count_in(&page.body, "comments");
    let likes = count_in(&page.body, "likes");
    assert_eq!(
        get(&format!("{url}/posts/7")).header("x-larder-cache"),
        Some("HIT")
    );

    // A comment: the list (query cache) shows it at once, the count (view)
    // once the worker has rewritten the document and purged the page.
    let r = post_form(
        &format!("{url}/posts/7/comments"),
        "author_id=3&body=first+%3Cb%3E",
    );
    assert_eq!(r.status, 303);
    let after = get(&format!("{url}/posts/7"));
    assert!(
        after.body.contains("first &lt;b&gt;"),
        "escaped and visible at once"
    );
    wait_until("the comment count", Duration::from_secs(10), || {
        count_in(&get(&format!("{url}/posts/7")).body, "comments") == comments + 1
    });
    post_form(&format!("{url}/posts/7/like"), "user_id=4");
    wait_until("the like count", Duration::from_secs(10), || {
        count_in(&get(&format!("{url}/posts/7")).body, "likes") == likes + 1
    });

    // Renaming the author reaches every post page of theirs.
    let author = {
        let b = &after.body;
        let i = b.find("/users/").unwrap() + 7;
        b[i..].split('"').next().unwrap().to_owned()
    };
    let user = get(&format!("{url}/users/{author}"));
    assert_eq!(user.status, 200);
    let their_posts: Vec<String> = user
        .body
        .match_indices("/posts/")
        .map(|(i, _)| user.body[i + 7..].split('"').next().unwrap().to_owned())
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert!(their_posts.len() >= 2, "{}", user.body);
    for p in &their_posts {
        get(&format!("{url}/posts/{p}")); // cached now
    }
    assert_eq!(
        post_form(
            &format!("{url}/users/{author}/rename"),
            "name=Renamed+Author"
        )
        .status,
        303
    );
    for p in &their_posts {
        wait_until("the rename on every post", Duration::from_secs(10), || {
            get(&format!("{url}/posts/{p}"))
                .body
                .contains("Renamed Author")
        });
    }

    // A new post is readable at once (read-through) and on the front page.
    let r = post_form(
        &format!("{url}/posts"),
        "author_id=2&title=Brand+new&body=hello",
    );
    assert_eq!(r.status, 303);
    let loc = r.header("location").unwrap().to_owned();
    assert!(get(&format!("{url}{loc}")).body.contains("Brand new"));
    assert!(get(&format!("{url}/")).body.contains("Brand new"));

    // Bad input: clear errors, nothing stored.
    assert_eq!(get(&format!("{url}/posts/999999")).status, 404);
    assert_eq!(get(&format!("{url}/posts/abc")).status, 400);
    assert_eq!(
        post_form(&format!("{url}/posts/7/comments"), "author_id=1&body=").status,
        400
    );
    assert_eq!(
        post_form(&format!("{url}/posts/7/comments"), "nonsense").status,
        422
    );

    // What the dashboard and Prometheus read.
    let stats: serde_json::Value =
        serde_json::from_str(&get(&format!("{url}/_larder/stats.json")).body).unwrap();
    let layers: Vec<&str> = stats["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    for l in ["http", "query", "views", "trending"] {
        assert!(layers.contains(&l), "{layers:?}");
    }
    assert!(stats["http"]["hits"].as_u64().unwrap() >= 3);
    assert_eq!(stats["views"]["dead_letters"], 0);
    let metrics = get(&format!("{url}/metrics"));
    assert_eq!(metrics.status, 200);
    for m in [
        "larder_cache_hits_total{cache=\"query\"}",
        "larder_http_hits_total",
        "larder_views_backlog",
        "larder_request_seconds",
    ] {
        assert!(metrics.body.contains(m), "{m} missing from /metrics");
    }
    // The operator's view of the running demo.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["stats", "--server", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("layer http") && text.contains("views            backlog"),
        "{text}"
    );

    let dash = get(&format!("{url}/_larder"));
    assert_eq!(dash.status, 200);
    assert!(dash.body.contains("<canvas id=\"hit\""));
}
