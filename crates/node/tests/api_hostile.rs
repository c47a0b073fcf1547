//! Bad input through every REST route: each answer is a typed JSON error
//! with the documented status and kind, and the node goes on serving other
//! clients (also while one client stalls an upload).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Http, Node, curl, wait_for};

/// One hostile request: the route it targets (as `rest_routes` names it),
/// curl arguments after the URL's path, and the expected status and kind.
struct Case {
    route: (&'static str, &'static str),
    path: String,
    args: Vec<String>,
    status: u16,
    kind: Option<&'static str>,
}

fn case(
    method: &'static str,
    template: &'static str,
    path: impl Into<String>,
    args: &[&str],
    status: u16,
    kind: &'static str,
) -> Case {
    Case {
        route: (method, template),
        path: path.into(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        status,
        kind: (!kind.is_empty()).then_some(kind),
    }
}

/// A CID-like text with one character changed: still well-formed, naming nothing.
fn altered(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

fn body_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    format!("@{}", p.display())
}

#[test]
fn bad_input_on_every_route_is_a_typed_error_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, me) = Node::init(dir.path(), "n");
    n.start(&["--listen", "127.0.0.1:0"]);
    let api = format!("http://{}", n.api_addr());
    let token = n.api_token();
    let auth = format!("Authorization: Bearer {token}");
    let call = |method: &str, path: &str, extra: &[&str]| -> Http {
        let url = format!("{api}{path}");
        let mut args: Vec<&str> = if method == "HEAD" {
            vec!["-I"]
        } else {
            vec!["-X", method]
        };
        args.extend(["-H", &auth]);
        args.extend(extra);
        args.push(&url);
        curl(&args)
    };

    // Something to aim at: a document with a version, and a blob.
    let w = call(
        "PUT",
        "/api/v1/collections/c/docs/d",
        &["-d", r#"{"fields": {"n": 1}}"#],
    );
    assert_eq!(w.status, 200, "{}", w.body);
    let version = w.json()["version"]["/"].as_str().unwrap().to_owned();
    let b = call(
        "POST",
        "/api/v1/blobs?collection=files",
        &["--data-binary", "some bytes"],
    );
    assert_eq!(b.status, 201, "{}", b.body);
    let blob = b.json()["id"].as_str().unwrap().to_owned();

    let big = body_file(
        dir.path(),
        "big.json",
        &format!("{{\"fields\": {{\"pad\": \"{}\"}}}}", "x".repeat(2 << 20)),
    );
    let long_name = "a".repeat(300);
    let many_ops = format!(
        "{{\"ops\": [{}]}}",
        vec![r#"{"field": "n", "op": "increment", "by": 1}"#; 257].join(",")
    );
    let many_ops = body_file(dir.path(), "ops.json", &many_ops);
    let many_writes = format!(
        "{{\"operations\": [{}]}}",
        vec![r#"{"op": "delete", "collection": "c", "id": "x"}"#; 501].join(",")
    );
    let many_writes = body_file(dir.path(), "batch.json", &many_writes);
    let long_text = format!(
        "{{\"peer\": \"8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm\", \"text\": \"{}\"}}",
        "t".repeat(70 * 1024)
    );
    let long_text = body_file(dir.path(), "text.json", &long_text);
    let own = format!("{{\"peer\": \"{me}\", \"text\": \"hi\"}}");
    let unknown_version = altered(&version);
    let unknown_blob = altered(&blob);

    const DOCS: &str = "/api/v1/collections/{c}/docs";
    const DOC: &str = "/api/v1/collections/{c}/docs/{id}";
    const QUERY: &str = "/api/v1/collections/{c}/query";
    const OPS: &str = "/api/v1/collections/{c}/docs/{id}/ops";
    const HISTORY: &str = "/api/v1/collections/{c}/docs/{id}/history";
    const AT: &str = "/api/v1/collections/{c}/docs/{id}/versions/{cid}";
    const RESTORE: &str = "/api/v1/collections/{c}/docs/{id}/restore";
    const BLOB: &str = "/api/v1/blobs/{id}";
    let cases = vec![
        case(
            "GET",
            "/api/v1/collections",
            "/api/v1/collections?x=1",
            &[],
            200,
            "",
        ),
        // Collection listing and queries.
        case(
            "GET",
            DOCS,
            "/api/v1/collections/c/docs?start_after=zz",
            &[],
            400,
            "bad_cursor",
        ),
        case(
            "GET",
            DOCS,
            "/api/v1/collections/c/docs?limit=abc",
            &[],
            400,
            "bad_request",
        ),
        case(
            "GET",
            DOCS,
            "/api/v1/collections/c/docs?limit=5000",
            &[],
            400,
            "page_too_large",
        ),
        case(
            "GET",
            DOCS,
            "/api/v1/collections/c/docs?colour=red",
            &[],
            400,
            "bad_request",
        ),
        case(
            "GET",
            DOCS,
            "/api/v1/collections/%01/docs",
            &[],
            400,
            "invalid_name",
        ),
        case(
            "GET",
            DOCS,
            format!("/api/v1/collections/{long_name}/docs"),
            &[],
            400,
            "invalid_name",
        ),
        case(
            "GET",
            DOCS,
            "/api/v1/collections/never-written/docs",
            &[],
            200,
            "",
        ),
        case(
            "GET",
            DOCS,
            "/api/v1/collections/%FF%FE/docs",
            &[],
            400,
            "bad_request",
        ),
        case(
            "POST",
            QUERY,
            "/api/v1/collections/c/query",
            &["-d", "{not json"],
            400,
            "bad_json",
        ),
        case(
            "POST",
            QUERY,
            "/api/v1/collections/c/query",
            &["--data-binary", &big],
            413,
            "body_too_large",
        ),
        case(
            "POST",
            QUERY,
            "/api/v1/collections/c/query",
            &["-d", r#"{"limit": 5000}"#],
            400,
            "page_too_large",
        ),
        case(
            "POST",
            QUERY,
            "/api/v1/collections/c/query",
            &["-d", r#"{"start_after": "!!"}"#],
            400,
            "bad_cursor",
        ),
        case(
            "POST",
            QUERY,
            "/api/v1/collections/c/query",
            &["-d", r#"{"where": [["a", "~", 1]]}"#],
            400,
            "bad_request",
        ),
        case(
            "POST",
            QUERY,
            "/api/v1/collections/c/query",
            &["-d", r#"{"where": [["a", "in", 1]]}"#],
            400,
            "invalid_query",
        ),
        case(
            "POST",
            QUERY,
            "/api/v1/collections/%00/query",
            &["-d", "{}"],
            400,
            "invalid_name",
        ),
        // One document.
        case(
            "GET",
            DOC,
            "/api/v1/collections/c/docs/missing",
            &[],
            404,
            "not_found",
        ),
        case(
            "GET",
            DOC,
            "/api/v1/collections/c/docs/%1B",
            &[],
            400,
            "invalid_name",
        ),
        case(
            "PUT",
            DOC,
            "/api/v1/collections/c/docs/d",
            &["-d", "{\"fields\": "],
            400,
            "bad_json",
        ),
        case(
            "PUT",
            DOC,
            "/api/v1/collections/c/docs/d",
            &["--data-binary", &big],
            413,
            "body_too_large",
        ),
        case(
            "PUT",
            DOC,
            "/api/v1/collections/c/docs/d",
            &["-d", r#"{"fields": [1]}"#],
            400,
            "bad_json",
        ),
        case(
            "PUT",
            DOC,
            "/api/v1/collections/c/docs/d",
            &["-d", r#"{"field": {}}"#],
            400,
            "bad_json",
        ),
        case(
            "PUT",
            DOC,
            "/api/v1/collections/c/docs/d",
            &["-d", r#"{"fields": {"a": {"/": "nope"}}}"#],
            400,
            "bad_json",
        ),
        case(
            "PUT",
            DOC,
            format!("/api/v1/collections/c/docs/{long_name}"),
            &["-d", r#"{"fields": {}}"#],
            400,
            "invalid_name",
        ),
        case(
            "PATCH",
            DOC,
            "/api/v1/collections/c/docs/d",
            &["-d", "[]"],
            400,
            "bad_json",
        ),
        case(
            "PATCH",
            DOC,
            "/api/v1/collections/c/docs/d",
            &[],
            400,
            "bad_json",
        ),
        case(
            "DELETE",
            DOC,
            "/api/v1/collections/%7F/docs/d",
            &[],
            400,
            "invalid_name",
        ),
        case(
            "POST",
            OPS,
            "/api/v1/collections/c/docs/d/ops",
            &["--data-binary", &many_ops],
            400,
            "batch_too_large",
        ),
        case(
            "POST",
            OPS,
            "/api/v1/collections/c/docs/d/ops",
            &["-d", r#"{"ops": []}"#],
            400,
            "bad_json",
        ),
        case(
            "POST",
            OPS,
            "/api/v1/collections/c/docs/d/ops",
            &["-d", r#"{"ops": [{"field": "n", "op": "explode"}]}"#],
            400,
            "bad_json",
        ),
        case(
            "POST",
            OPS,
            "/api/v1/collections/c/docs/d/ops",
            &["-d", r#"{"ops": [{"field": "n", "op": "increment"}]}"#],
            400,
            "bad_json",
        ),
        case(
            "POST",
            OPS,
            "/api/v1/collections/c/docs/d/ops",
            &["-d", r#"{"ops": [{"field": "", "op": "delete"}]}"#],
            400,
            "invalid_name",
        ),
        case(
            "GET",
            HISTORY,
            "/api/v1/collections/c/docs/missing/history",
            &[],
            404,
            "not_found",
        ),
        case(
            "GET",
            HISTORY,
            "/api/v1/collections/c/docs/d/history?limit=0",
            &[],
            400,
            "bad_request",
        ),
        case(
            "GET",
            AT,
            "/api/v1/collections/c/docs/d/versions/not-a-cid",
            &[],
            400,
            "bad_cid",
        ),
        case(
            "GET",
            AT,
            format!("/api/v1/collections/c/docs/other/versions/{version}"),
            &[],
            404,
            "not_found",
        ),
        case(
            "GET",
            AT,
            format!("/api/v1/collections/c/docs/d/versions/{unknown_version}"),
            &[],
            404,
            "not_found",
        ),
        case(
            "POST",
            RESTORE,
            "/api/v1/collections/c/docs/d/restore",
            &["-d", r#"{"version": 5}"#],
            400,
            "bad_json",
        ),
        case(
            "POST",
            RESTORE,
            "/api/v1/collections/c/docs/d/restore",
            &["-d", r#"{"version": {"/": "zz"}}"#],
            400,
            "bad_cid",
        ),
        case(
            "POST",
            RESTORE,
            "/api/v1/collections/c/docs/d/restore",
            &[
                "-d",
                &format!(r#"{{"version": {{"/": "{unknown_version}"}}}}"#),
            ],
            404,
            "not_found",
        ),
        case(
            "POST",
            "/api/v1/batch",
            "/api/v1/batch",
            &["--data-binary", &many_writes],
            400,
            "batch_too_large",
        ),
        case(
            "POST",
            "/api/v1/batch",
            "/api/v1/batch",
            &["-d", r#"{"operations": []}"#],
            400,
            "bad_json",
        ),
        case(
            "POST",
            "/api/v1/batch",
            "/api/v1/batch",
            &[
                "-d",
                r#"{"operations": [{"op": "swap", "collection": "c", "id": "d"}]}"#,
            ],
            400,
            "bad_json",
        ),
        case(
            "POST",
            "/api/v1/batch",
            "/api/v1/batch",
            &[
                "-d",
                r#"{"operations": [{"op": "set", "collection": "", "id": "d", "fields": {}}]}"#,
            ],
            400,
            "invalid_name",
        ),
        case(
            "POST",
            "/api/v1/batch",
            "/api/v1/batch",
            &[
                "-d",
                r#"{"operations": [{"op": "update", "collection": "c", "id": "ghost", "fields": {}}]}"#,
            ],
            404,
            "not_found",
        ),
        // Blobs.
        case("GET", "/api/v1/blobs", "/api/v1/blobs?page=2", &[], 200, ""),
        case(
            "POST",
            "/api/v1/blobs",
            "/api/v1/blobs",
            &["-H", "Content-Length: 300000000", "-d", "x"],
            413,
            "body_too_large",
        ),
        case(
            "POST",
            "/api/v1/blobs",
            "/api/v1/blobs?collection=%01",
            &["-d", "x"],
            400,
            "invalid_name",
        ),
        case(
            "POST",
            "/api/v1/blobs",
            "/api/v1/blobs?colection=c",
            &["-d", "x"],
            400,
            "bad_request",
        ),
        case(
            "GET",
            BLOB,
            "/api/v1/blobs/not-a-blob",
            &[],
            400,
            "bad_blob_id",
        ),
        case(
            "GET",
            BLOB,
            format!("/api/v1/blobs/{unknown_blob}"),
            &[],
            404,
            "not_found",
        ),
        case(
            "GET",
            BLOB,
            format!("/api/v1/blobs/{blob}"),
            &["-H", "Range: bytes=abc"],
            400,
            "bad_request",
        ),
        case(
            "GET",
            BLOB,
            format!("/api/v1/blobs/{blob}"),
            &["-H", "Range: bytes=50-"],
            416,
            "range_not_satisfiable",
        ),
        case(
            "GET",
            BLOB,
            format!("/api/v1/blobs/{blob}"),
            &["-H", "Range: bytes=0-1,3-4"],
            416,
            "range_not_satisfiable",
        ),
        case("HEAD", BLOB, "/api/v1/blobs/not-a-blob", &[], 400, ""),
        case(
            "HEAD",
            BLOB,
            format!("/api/v1/blobs/{unknown_blob}"),
            &[],
            404,
            "",
        ),
        // Texts, peers, sync, changes, queue, transports.
        case(
            "GET",
            "/api/v1/texts/inbox",
            "/api/v1/texts/inbox?limit=5000",
            &[],
            400,
            "page_too_large",
        ),
        case(
            "GET",
            "/api/v1/texts/outbox",
            "/api/v1/texts/outbox?limit=x",
            &[],
            400,
            "bad_request",
        ),
        case(
            "POST",
            "/api/v1/texts",
            "/api/v1/texts",
            &["-d", "{"],
            400,
            "bad_json",
        ),
        case(
            "POST",
            "/api/v1/texts",
            "/api/v1/texts",
            &["-d", r#"{"peer": "x", "text": "hi"}"#],
            400,
            "bad_peer",
        ),
        case(
            "POST",
            "/api/v1/texts",
            "/api/v1/texts",
            &["--data-binary", &long_text],
            413,
            "body_too_large",
        ),
        case(
            "POST",
            "/api/v1/texts",
            "/api/v1/texts",
            &["-d", &own],
            400,
            "invalid_argument",
        ),
        case(
            "GET",
            "/api/v1/peers",
            "/api/v1/peers",
            &["-X", "PUT"],
            405,
            "method_not_allowed",
        ),
        case(
            "GET",
            "/api/v1/sync",
            "/api/v1/sync",
            &["-X", "DELETE"],
            405,
            "method_not_allowed",
        ),
        case(
            "POST",
            "/api/v1/sync",
            "/api/v1/sync",
            &["-d", r#"{"peer": 7}"#],
            400,
            "bad_json",
        ),
        case(
            "POST",
            "/api/v1/sync",
            "/api/v1/sync",
            &["-d", r#"{"peer": "nobody"}"#],
            400,
            "bad_peer",
        ),
        case(
            "GET",
            "/api/v1/changes",
            "/api/v1/changes?limit=5000",
            &[],
            400,
            "page_too_large",
        ),
        case(
            "GET",
            "/api/v1/changes",
            "/api/v1/changes?since=-1",
            &[],
            400,
            "bad_request",
        ),
        case(
            "GET",
            "/api/v1/queue",
            "/api/v1/queue",
            &["-X", "POST"],
            405,
            "method_not_allowed",
        ),
        case(
            "GET",
            "/api/v1/transports",
            "/api/v1/transports/x",
            &[],
            404,
            "unknown_route",
        ),
    ];

    let routes = ecomesh_node::api::rest::rest_routes();
    for (method, path) in &routes {
        assert!(
            cases.iter().any(|c| c.route == (*method, path.as_str())),
            "no hostile case for {method} {path}"
        );
    }
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let r = call(c.route.0, &c.path, &args);
        let what = format!("{} {} {:?}", c.route.0, c.path, c.args);
        let what = &what[..what.len().min(300)];
        assert_eq!(r.status, c.status, "{what}: {}", r.body);
        if let Some(kind) = c.kind {
            assert_eq!(r.json()["error"]["kind"], kind, "{what}: {}", r.body);
            assert!(
                !r.json()["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .is_empty(),
                "{what}: an error without a message"
            );
        }
    }

    // Without a token, or with an expired session token, every route is 401.
    let session = call("POST", "/api/v1/sessions", &["-d", r#"{"ttl_secs": 1}"#]);
    let session = session.json()["token"].as_str().unwrap().to_owned();
    let expired_auth = format!("Authorization: Bearer {session}");
    wait_for("the session token to expire", || {
        let r = curl(&["-H", &expired_auth, &format!("{api}/api/v1/collections")]);
        (r.status == 401).then(|| assert_eq!(r.json()["error"]["kind"], "token_expired"))
    });
    for (method, path) in &routes {
        let path = path
            .replace("{c}", "c")
            .replace("{id}", "d")
            .replace("{cid}", &version);
        let url = format!("{api}{path}");
        let m: Vec<&str> = if *method == "HEAD" {
            vec!["-I"]
        } else {
            vec!["-X", method]
        };
        for header in [None, Some(expired_auth.as_str())] {
            let mut args = m.clone();
            if let Some(h) = header {
                args.extend(["-H", h]);
            }
            args.push(&url);
            let r = curl(&args);
            assert_eq!(r.status, 401, "{method} {path} with {header:?}: {}", r.body);
        }
    }

    // Clients that stall uploads hold only their own connections and the
    // upload slots: one more upload is 503 `busy`, other clients are served.
    let stall = || {
        let mut c = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-X", "POST", "-H", &auth])
            .args(["-T", "-"])
            .arg(format!("{api}/api/v1/blobs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin.as_mut().unwrap().write_all(&[7u8; 1000]).unwrap();
        c
    };
    let mut stalled: Vec<_> = (0..4).map(|_| stall()).collect();
    wait_for("a fifth upload to be refused as busy", || {
        let r = call("POST", "/api/v1/blobs", &["-d", "x"]);
        (r.status == 503).then(|| assert_eq!(r.json()["error"]["kind"], "busy"))
    });
    let ok = call(
        "PUT",
        "/api/v1/collections/c/docs/after",
        &["-d", r#"{"fields": {"still": "serving"}}"#],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let read = call("GET", "/api/v1/collections/c/docs/after", &[]);
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["fields"]["still"], "serving");
    let status = curl(&["-H", &auth, &format!("{api}/api/v1/status")]);
    assert_eq!(status.status, 200);
    for mut c in stalled.drain(..) {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    wait_for(
        "uploads accepted again once the stalled ones went away",
        || (call("POST", "/api/v1/blobs", &["-d", "x"]).status == 201).then_some(()),
    );
    n.terminate();
}
