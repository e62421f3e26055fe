//! The ring agrees with an independent ketama implementation (vectors from
//! `scripts/ketama_vectors.py`, which uses uhashring's libketama ring).

use larder_memcached::ketama::Ring;

#[test]
fn agrees_with_reference_vectors() {
    let data: serde_json::Value =
        serde_json::from_str(include_str!("ketama_vectors.json")).unwrap();
    let mut checked = 0;
    for pool in data.as_array().unwrap() {
        let servers: Vec<&str> = pool["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let ring = Ring::new(servers.iter().enumerate().map(|(i, s)| (*s, i)));
        for (key, expected) in pool["keys"].as_object().unwrap() {
            let got = servers[ring.server_for(key.as_bytes()).unwrap()];
            assert_eq!(
                got,
                expected.as_str().unwrap(),
                "key {key:?} in {servers:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 2500, "only {checked} vectors");
}
