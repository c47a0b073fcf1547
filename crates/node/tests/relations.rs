//! Relationships and capabilities through the real `ecomesh` binary on
//! loopback (issue 20, items 2 and 3): `[relationships]` in ecomesh.toml and
//! `ecomesh relation set/remove/list` decide, with `--reach`, which peer gets
//! a collection, durably; `ecomesh cap restrict/grant/install/revoke/list`
//! refuse a peer without a token (reported), admit it with one, and the
//! `/api/v1/relations` and `/api/v1/capabilities` routes answer the same.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::{Http, Node, curl, ecomesh, ok_json, wait_for};
use serde_json::Value;

fn fails_with(node: &Node, args: &[&str], needle: &str) {
    let o = ecomesh(&node.data, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "ecomesh {args:?} should fail");
    assert!(err.contains(needle), "ecomesh {args:?}: {err}");
}

fn relation_of(node: &Node, peer: &str) -> Option<(String, String)> {
    let v = ok_json(&node.data, &["relation", "list"]);
    v["relations"].as_array().unwrap().iter().find_map(|r| {
        (r["peer_id"] == peer).then(|| {
            (
                r["level"].as_str().unwrap().to_owned(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
    })
}

fn put(node: &Node, collection: &str, id: &str) {
    ok_json(&node.data, &["doc", "put", collection, id, r#"{"v":1}"#]);
}

/// An API call on `node`: METHOD, path under the base URL, optional body.
fn api(node: &Node, method: &str, path: &str, body: Option<&str>) -> Http {
    let url = format!("http://{}{path}", node.api_addr());
    let auth = format!("Authorization: Bearer {}", node.api_token().trim());
    let mut args = vec!["-X", method, "-H", auth.as_str()];
    if let Some(b) = body {
        args.extend(["-d", b]);
    }
    args.push(&url);
    curl(&args)
}

fn force_sync(node: &Node) {
    let r = api(node, "POST", "/api/v1/sync", Some("{}"));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Writes the marker `open/<id>` on `from` and waits until `to` holds it, so
/// what `from` pushed before it had its turn.
fn marker(from: &Node, to: &[&Node], id: &str) {
    put(from, "open", id);
    for n in to {
        wait_for("the marker to arrive", || n.local_fields("open", id));
    }
}

#[test]
fn relationships_from_config_and_cli_decide_reach_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ida) = Node::init(dir.path(), "a");
    let (mut f, idf) = Node::init(dir.path(), "f");
    let (mut s, ids) = Node::init(dir.path(), "s");
    eprintln!("a = {ida}, family f = {idf}, s = {ids}");
    std::fs::write(
        a.data.join("ecomesh.toml"),
        format!("reach = [\"fam=local\"]\n\n[relationships]\nfamily = [\"{idf}\"]\n"),
    )
    .unwrap();
    let addr = a.start(&["--listen", "127.0.0.1:0"]);
    f.start(&["--listen", "127.0.0.1:0", "--peer", &addr]);
    s.start(&["--listen", "127.0.0.1:0", "--peer", &addr]);
    wait_for("A to see F and S", || (a.peers().len() == 2).then_some(()));

    assert_eq!(
        relation_of(&a, &idf),
        Some(("family".into(), "config".into()))
    );
    assert_eq!(relation_of(&a, &ids), None, "S is a stranger");
    fails_with(
        &a,
        &["relation", "set", "nobody", "family"],
        "not a peer id",
    );
    fails_with(
        &a,
        &["relation", "set", &ids, "friend"],
        "not a relationship level",
    );
    fails_with(&a, &["relation", "set", &ids, "own-device"], "device links");
    fails_with(&a, &["relation", "set", &ida, "family"], "own id");

    // A Local collection reaches configured family, not a stranger.
    put(&a, "fam", "f1");
    marker(&a, &[&f, &s], "m1");
    wait_for("F to get the family document", || {
        f.local_fields("fam", "f1")
    });
    force_sync(&a);
    marker(&a, &[&f, &s], "m2");
    assert!(
        s.local_fields("fam", "f1").is_none(),
        "a stranger got family data"
    );

    // S becomes family at run time: served from now on.
    let row = ok_json(&a.data, &["relation", "set", &ids, "family"]);
    assert_eq!(row["relation"]["level"], "family");
    assert_eq!(row["relation"]["source"], "runtime");
    force_sync(&a);
    wait_for("S to get the family document once family", || {
        s.local_fields("fam", "f1")
    });

    // Durable: after a restart A still knows S as family.
    a.terminate();
    a.start(&["--listen", &addr]);
    assert_eq!(
        relation_of(&a, &ids),
        Some(("family".into(), "runtime".into()))
    );
    assert_eq!(
        relation_of(&a, &idf),
        Some(("family".into(), "config".into()))
    );

    // The same through the HTTP API.
    let r = api(&a, "GET", "/api/v1/relations", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["relations"].as_array().unwrap().len(), 2);
    let r = api(
        &a,
        "PUT",
        &format!("/api/v1/relations/{ids}"),
        Some(r#"{"level": "municipal"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["level"], "municipal");
    let r = api(
        &a,
        "PUT",
        "/api/v1/relations/nobody",
        Some(r#"{"level": "family"}"#),
    );
    assert_eq!(
        (r.status, r.json()["error"]["kind"].clone()),
        (400, Value::from("bad_peer"))
    );
    let r = api(&a, "DELETE", &format!("/api/v1/relations/{ids}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api(&a, "DELETE", &format!("/api/v1/relations/{ids}"), None);
    assert_eq!(r.status, 404, "nothing left to remove: {}", r.body);
    assert_eq!(relation_of(&a, &ids), None);
    // Removing the configured one is not possible at run time.
    let o = ok_json(&a.data, &["relation", "remove", &idf]);
    assert_eq!(o["removed"], false);
    assert_eq!(o["relation"]["level"], "family");
    a.terminate();
    f.terminate();
    s.terminate();
}

#[test]
fn capabilities_from_the_cli_refuse_report_admit_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ida) = Node::init(dir.path(), "a");
    let (mut b, idb) = Node::init(dir.path(), "b");
    eprintln!("a = {ida}, b = {idb}");
    let addr = a.start(&["--listen", "127.0.0.1:0"]);
    b.start(&["--listen", "127.0.0.1:0", "--peer", &addr]);
    wait_for("A to see B", || (a.peers().len() == 1).then_some(()));

    let list = ok_json(&a.data, &["cap", "restrict", "ledger"]);
    assert_eq!(list["restricted"][0]["collection"], "ledger");
    assert_eq!(list["restricted"][0]["issuer"], ida.as_str());
    put(&a, "ledger", "l1");
    force_sync(&a);
    marker(&a, &[&b], "m1");
    let refusals = wait_for("A to report B's refused read", || {
        let l = ok_json(&a.data, &["cap", "list"]);
        let r = l["refusals"].as_array().unwrap().clone();
        r.iter()
            .any(|x| x["peer_id"] == idb.as_str() && x["action"] == "read")
            .then_some(r)
    });
    assert!(refusals.iter().all(|x| x["collection"] == "ledger"));
    assert!(b.local_fields("ledger", "l1").is_none());

    // Grant B read: it is served the ledger from now on.
    fails_with(&a, &["cap", "grant", "ledger", &idb], "--read");
    fails_with(
        &a,
        &["cap", "grant", "ledger", &idb, "--read", "--expires", "3w"],
        "unit",
    );
    let tok = ok_json(
        &a.data,
        &["cap", "grant", "ledger", &idb, "--read", "--expires", "1h"],
    );
    assert_eq!(tok["actions"], serde_json::json!(["read"]));
    assert_eq!(tok["peer_id"], idb.as_str());
    let token = tok["token"].as_str().unwrap().to_owned();
    let token_id = tok["token_id"].as_str().unwrap().to_owned();
    force_sync(&a);
    wait_for("B to be served the ledger", || {
        b.local_fields("ledger", "l1")
    });

    // Another replica installs the token (its signature checked); garbage is refused.
    let installed = ok_json(&b.data, &["cap", "install", &token]);
    assert_eq!(installed["token_id"], token_id.as_str());
    fails_with(&b, &["cap", "install", "3xyz"], "capability");
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 5;
    forged[last] = if forged[last] == b'2' { b'3' } else { b'2' };
    fails_with(
        &b,
        &["cap", "install", &String::from_utf8(forged).unwrap()],
        "",
    );

    // Revoked: listed no more, and B's later reads are refused again.
    let after = ok_json(&a.data, &["cap", "revoke", &token_id]);
    assert!(after["tokens"].as_array().unwrap().is_empty());
    fails_with(&a, &["cap", "revoke", "xyz"], "token id");
    put(&a, "ledger", "l2");
    force_sync(&a);
    marker(&a, &[&b], "m2");
    assert!(
        b.local_fields("ledger", "l2").is_none(),
        "revoked, still served"
    );

    // The HTTP routes.
    let r = api(&a, "GET", "/api/v1/capabilities", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["restricted"][0]["collection"], "ledger");
    let r = api(
        &a,
        "POST",
        "/api/v1/capabilities/restricted",
        Some(r#"{"collection": "diary"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = format!(
        r#"{{"collection": "diary", "peer": "{idb}", "actions": ["read", "write"], "expires_secs": 60}}"#
    );
    let r = api(&a, "POST", "/api/v1/capabilities/grants", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    let g = r.json();
    assert_eq!(g["actions"], serde_json::json!(["read", "write"]));
    let r = api(
        &b,
        "POST",
        "/api/v1/capabilities/tokens",
        Some(&format!(
            r#"{{"token": "{}"}}"#,
            g["token"].as_str().unwrap()
        )),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api(
        &b,
        "POST",
        "/api/v1/capabilities/tokens",
        Some(r#"{"token": "zz"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let id = g["token_id"].as_str().unwrap();
    let r = api(
        &a,
        "DELETE",
        &format!("/api/v1/capabilities/tokens/{id}"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["token_id"] != id)
    );
    a.terminate();
    b.terminate();
}
