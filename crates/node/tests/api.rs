//! The HTTP API's door: token, origin and host checks, typed errors.

mod common;

use common::{Node, curl};

#[test]
fn the_api_refuses_strangers_and_answers_the_token_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, id) = Node::init(dir.path(), "n");
    n.start(&["--listen", "127.0.0.1:0"]);
    let api = n.api_addr();
    let token = n.api_token();
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("http://{api}/api/v1/status");

    let ok = curl(&["-H", &auth, &url]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["peer_id"], id.as_str());

    let none = curl(&[&url]);
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["kind"], "missing_token");
    let wrong = curl(&["-H", "Authorization: Bearer not-the-token", &url]);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["kind"], "bad_token");
    let other_site = curl(&["-H", &auth, "-H", "Origin: http://evil.example", &url]);
    assert_eq!(other_site.status, 403);
    assert_eq!(other_site.json()["error"]["kind"], "forbidden_origin");
    let rebound = curl(&["-H", &auth, "-H", "Host: evil.example:7780", &url]);
    assert_eq!(rebound.status, 403);
    assert_eq!(rebound.json()["error"]["kind"], "forbidden_host");
    let same_origin = curl(&["-H", &auth, "-H", &format!("Origin: http://{api}"), &url]);
    assert_eq!(same_origin.status, 200);

    let unknown = curl(&["-H", &auth, &format!("http://{api}/api/v1/nope")]);
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["kind"], "unknown_route");
    let method = curl(&["-X", "DELETE", "-H", &auth, &url]);
    assert_eq!(method.status, 405);
    assert_eq!(method.json()["error"]["kind"], "method_not_allowed");

    // Session tokens: malformed and oversized bodies are typed errors; an
    // issued token works until it expires.
    let sessions = format!("http://{api}/api/v1/sessions");
    let bad = curl(&["-H", &auth, "-d", "{not json", &sessions]);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["kind"], "bad_json");
    let big = format!("{{\"ttl_secs\": 1, \"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let body_file = dir.path().join("big.json");
    std::fs::write(&body_file, big).unwrap();
    let too_big = curl(&[
        "-H",
        &auth,
        "--data-binary",
        &format!("@{}", body_file.display()),
        &sessions,
    ]);
    assert_eq!(too_big.status, 413);
    assert_eq!(too_big.json()["error"]["kind"], "body_too_large");
    let s = curl(&["-H", &auth, "-d", r#"{"ttl_secs": 60}"#, &sessions]);
    assert_eq!(s.status, 200, "{}", s.body);
    let session = s.json()["token"].as_str().unwrap().to_owned();
    let with_session = curl(&[&format!("{url}?access_token={session}")]);
    assert_eq!(with_session.status, 200, "{}", with_session.body);

    // Another node on the same machine cannot take the default port twice;
    // the error names the fix.
    let (mut m, _) = Node::init(dir.path(), "m");
    let busy = common::ecomesh(
        &m.data,
        &[
            "node",
            "--no-mdns",
            "--listen",
            "127.0.0.1:0",
            "--api",
            &api,
        ],
    );
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("--api 127.0.0.1:0"));
    let exposed = common::ecomesh(&m.data, &["node", "--no-mdns", "--api", "0.0.0.0:0"]);
    assert!(!exposed.status.success());
    assert!(String::from_utf8_lossy(&exposed.stderr).contains("--api-expose"));
    m.start(&["--listen", "127.0.0.1:0"]);
}
