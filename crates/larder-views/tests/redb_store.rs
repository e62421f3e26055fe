//! The embedded document store: versions only move forward, also under
//! concurrent writers, and documents survive a reopen.

use std::sync::Arc;

use larder_views::{DocStore, RedbStore, Versioned};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_only_move_forward_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        assert!(s
            .put_if_newer("post", "42", 2, b"v2".to_vec())
            .await
            .unwrap());
        assert!(
            !s.put_if_newer("post", "42", 1, b"v1".to_vec())
                .await
                .unwrap(),
            "an older version replaced a newer one"
        );
        assert!(!s
            .put_if_newer("post", "42", 2, b"again".to_vec())
            .await
            .unwrap());
        assert_eq!(
            s.get("post", "42").await.unwrap(),
            Some(Versioned {
                version: 2,
                doc: b"v2".to_vec()
            })
        );
        // Views and keys do not collide by concatenation.
        assert!(s.put_if_newer("ab", "c", 1, b"x".to_vec()).await.unwrap());
        assert_eq!(s.get("a", "bc").await.unwrap(), None);

        // Concurrent writers with shuffled versions: the highest wins.
        let s = Arc::new(s);
        let mut tasks = Vec::new();
        for v in [5u64, 9, 3, 8, 1, 7, 2, 6, 4] {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.put_if_newer("counter", "k", v, v.to_string().into_bytes())
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.get("counter", "k").await.unwrap().unwrap().version, 9);
    }
    // Nothing expires, and a reopened store has everything.
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.get("post", "42").await.unwrap().unwrap().doc, b"v2");
    assert_eq!(s.get("counter", "k").await.unwrap().unwrap().doc, b"9");
    assert_eq!(s.get("post", "missing").await.unwrap(), None);
}
