//! Bad input through every REST route: each answer is a typed JSON error
//! with the documented status and kind, and the node goes on serving other
//! clients (also while clients stall uploads).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Http, Node, curl, wait_for};

/// One hostile request: the route it targets (as `rest_routes` names it),
/// the concrete path, curl arguments, and the expected status and kind.
struct Case {
    route: (&'static str, &'static str),
    path: String,
    args: Vec<String>,
    status: u16,
    kind: Option<&'static str>,
}

fn case(
    route: (&'static str, &'static str),
    path: impl Into<String>,
    args: &[&str],
    status: u16,
    kind: &'static str,
) -> Case {
    Case {
        route,
        path: path.into(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        status,
        kind: (!kind.is_empty()).then_some(kind),
    }
}

/// A node's API with its token.
struct Api {
    base: String,
    auth: String,
}

impl Api {
    /// `method` on `path` with the token and `extra` curl arguments.
    fn call(&self, method: &str, path: &str, extra: &[&str]) -> Http {
        let url = format!("{}{path}", self.base);
        let mut args: Vec<&str> = if method == "HEAD" {
            vec!["-I"]
        } else {
            vec!["-X", method]
        };
        args.extend(["-H", &self.auth]);
        args.extend(extra);
        args.push(&url);
        curl(&args)
    }
}

/// What the cases aim at and carry: a real version and blob, ids like them
/// that name nothing, and oversized bodies (as curl `@file` arguments).
struct Fixture {
    me: String,
    version: String,
    blob: String,
    unknown_version: String,
    unknown_blob: String,
    long_name: String,
    big: String,
    many_ops: String,
    many_writes: String,
    long_text: String,
}

/// A CID-like text with one character changed: still well-formed, naming nothing.
fn altered(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

fn body_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    format!("@{}", p.display())
}

impl Fixture {
    fn new(api: &Api, dir: &Path, me: String) -> Fixture {
        let w = api.call(
            "PUT",
            "/api/v1/collections/c/docs/d",
            &["-d", r#"{"fields": {"n": 1}}"#],
        );
        assert_eq!(w.status, 200, "{}", w.body);
        let version = w.json()["version"]["/"].as_str().unwrap().to_owned();
        let b = api.call(
            "POST",
            "/api/v1/blobs?collection=files",
            &["--data-binary", "some bytes"],
        );
        assert_eq!(b.status, 201, "{}", b.body);
        let blob = b.json()["id"].as_str().unwrap().to_owned();
        let ops = vec![r#"{"field": "n", "op": "increment", "by": 1}"#; 257].join(",");
        let writes = vec![r#"{"op": "delete", "collection": "c", "id": "x"}"#; 501].join(",");
        let text = "t".repeat(70 * 1024);
        Fixture {
            unknown_version: altered(&version),
            unknown_blob: altered(&blob),
            version,
            blob,
            long_name: "a".repeat(300),
            big: body_file(
                dir,
                "big.json",
                &format!("{{\"fields\": {{\"pad\": \"{}\"}}}}", "x".repeat(2 << 20)),
            ),
            many_ops: body_file(dir, "ops.json", &format!("{{\"ops\": [{ops}]}}")),
            many_writes: body_file(
                dir,
                "batch.json",
                &format!("{{\"operations\": [{writes}]}}"),
            ),
            long_text: body_file(
                dir,
                "text.json",
                &format!(
                    "{{\"peer\": \"8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm\", \"text\": \"{text}\"}}"
                ),
            ),
            me,
        }
    }
}

const COLLECTIONS: (&str, &str) = ("GET", "/api/v1/collections");
const DOCS: (&str, &str) = ("GET", "/api/v1/collections/{c}/docs");
const QUERY: (&str, &str) = ("POST", "/api/v1/collections/{c}/query");
const GET: (&str, &str) = ("GET", "/api/v1/collections/{c}/docs/{id}");
const PUT: (&str, &str) = ("PUT", "/api/v1/collections/{c}/docs/{id}");
const PATCH: (&str, &str) = ("PATCH", "/api/v1/collections/{c}/docs/{id}");
const DELETE: (&str, &str) = ("DELETE", "/api/v1/collections/{c}/docs/{id}");
const OPS: (&str, &str) = ("POST", "/api/v1/collections/{c}/docs/{id}/ops");
const HISTORY: (&str, &str) = ("GET", "/api/v1/collections/{c}/docs/{id}/history");
const AT: (&str, &str) = ("GET", "/api/v1/collections/{c}/docs/{id}/versions/{cid}");
const RESTORE: (&str, &str) = ("POST", "/api/v1/collections/{c}/docs/{id}/restore");
const BATCH: (&str, &str) = ("POST", "/api/v1/batch");
const BLOBS: (&str, &str) = ("GET", "/api/v1/blobs");
const UPLOAD: (&str, &str) = ("POST", "/api/v1/blobs");
const BLOB: (&str, &str) = ("GET", "/api/v1/blobs/{id}");
const BLOB_HEAD: (&str, &str) = ("HEAD", "/api/v1/blobs/{id}");
const INBOX: (&str, &str) = ("GET", "/api/v1/texts/inbox");
const OUTBOX: (&str, &str) = ("GET", "/api/v1/texts/outbox");
const SEND: (&str, &str) = ("POST", "/api/v1/texts");
const PEERS: (&str, &str) = ("GET", "/api/v1/peers");
const SYNC: (&str, &str) = ("GET", "/api/v1/sync");
const FORCE: (&str, &str) = ("POST", "/api/v1/sync");
const CHANGES: (&str, &str) = ("GET", "/api/v1/changes");
const QUEUE: (&str, &str) = ("GET", "/api/v1/queue");
const TRANSPORTS: (&str, &str) = ("GET", "/api/v1/transports");
const RELATIONS: (&str, &str) = ("GET", "/api/v1/relations");
const RELATION_SET: (&str, &str) = ("PUT", "/api/v1/relations/{peer}");
const RELATION_DEL: (&str, &str) = ("DELETE", "/api/v1/relations/{peer}");
const CAPS: (&str, &str) = ("GET", "/api/v1/capabilities");
const RESTRICT: (&str, &str) = ("POST", "/api/v1/capabilities/restricted");
const GRANT: (&str, &str) = ("POST", "/api/v1/capabilities/grants");
const INSTALL: (&str, &str) = ("POST", "/api/v1/capabilities/tokens");
const REVOKE: (&str, &str) = ("DELETE", "/api/v1/capabilities/tokens/{id}");

/// The hostile requests, one or more per route.
#[rustfmt::skip]
fn cases(f: &Fixture) -> Vec<Case> {
    let (v, uv, b, ub, long) = (&f.version, &f.unknown_version, &f.blob, &f.unknown_blob, &f.long_name);
    let own = format!("{{\"peer\": \"{}\", \"text\": \"hi\"}}", f.me);
    let restore_unknown = format!(r#"{{"version": {{"/": "{uv}"}}}}"#);
    vec![
        case(COLLECTIONS, "/api/v1/collections?x=1", &[], 200, ""),
        case(DOCS, "/api/v1/collections/c/docs?start_after=zz", &[], 400, "bad_cursor"),
        case(DOCS, "/api/v1/collections/c/docs?limit=abc", &[], 400, "bad_request"),
        case(DOCS, "/api/v1/collections/c/docs?limit=5000", &[], 400, "page_too_large"),
        case(DOCS, "/api/v1/collections/c/docs?limit=0", &[], 400, "bad_request"),
        case(DOCS, "/api/v1/collections/c/docs?colour=red", &[], 400, "bad_request"),
        case(DOCS, "/api/v1/collections/%01/docs", &[], 400, "invalid_name"),
        case(DOCS, format!("/api/v1/collections/{long}/docs"), &[], 400, "invalid_name"),
        case(DOCS, "/api/v1/collections/never-written/docs", &[], 200, ""),
        case(DOCS, "/api/v1/collections/%FF%FE/docs", &[], 400, "bad_request"),
        case(QUERY, "/api/v1/collections/c/query", &["-d", "{not json"], 400, "bad_json"),
        case(QUERY, "/api/v1/collections/c/query", &["--data-binary", &f.big], 413, "body_too_large"),
        case(QUERY, "/api/v1/collections/c/query", &["-d", r#"{"limit": 5000}"#], 400, "page_too_large"),
        case(QUERY, "/api/v1/collections/c/query", &["-d", r#"{"start_after": "!!"}"#], 400, "bad_cursor"),
        case(QUERY, "/api/v1/collections/c/query", &["-d", r#"{"where": [["a", "~", 1]]}"#], 400, "bad_request"),
        case(QUERY, "/api/v1/collections/c/query", &["-d", r#"{"where": [["a", "in", 1]]}"#], 400, "invalid_query"),
        case(QUERY, "/api/v1/collections/%00/query", &["-d", "{}"], 400, "invalid_name"),
        case(GET, "/api/v1/collections/c/docs/missing", &[], 404, "not_found"),
        case(GET, "/api/v1/collections/c/docs/%1B", &[], 400, "invalid_name"),
        case(PUT, "/api/v1/collections/c/docs/d", &["-d", "{\"fields\": "], 400, "bad_json"),
        case(PUT, "/api/v1/collections/c/docs/d", &["--data-binary", &f.big], 413, "body_too_large"),
        case(PUT, "/api/v1/collections/c/docs/d", &["-d", r#"{"fields": [1]}"#], 400, "bad_json"),
        case(PUT, "/api/v1/collections/c/docs/d", &["-d", r#"{"field": {}}"#], 400, "bad_json"),
        case(PUT, "/api/v1/collections/c/docs/d", &["-d", r#"{"fields": {"a": {"/": "nope"}}}"#], 400, "bad_json"),
        case(PUT, format!("/api/v1/collections/c/docs/{long}"), &["-d", r#"{"fields": {}}"#], 400, "invalid_name"),
        case(PATCH, "/api/v1/collections/c/docs/d", &["-d", "[]"], 400, "bad_json"),
        case(PATCH, "/api/v1/collections/c/docs/d", &[], 400, "bad_json"),
        case(DELETE, "/api/v1/collections/%7F/docs/d", &[], 400, "invalid_name"),
        case(OPS, "/api/v1/collections/c/docs/d/ops", &["--data-binary", &f.many_ops], 400, "batch_too_large"),
        case(OPS, "/api/v1/collections/c/docs/d/ops", &["-d", r#"{"ops": []}"#], 400, "bad_json"),
        case(OPS, "/api/v1/collections/c/docs/d/ops", &["-d", r#"{"ops": [{"field": "n", "op": "explode"}]}"#], 400, "bad_json"),
        case(OPS, "/api/v1/collections/c/docs/d/ops", &["-d", r#"{"ops": [{"field": "n", "op": "increment"}]}"#], 400, "bad_json"),
        case(OPS, "/api/v1/collections/c/docs/d/ops", &["-d", r#"{"ops": [{"field": "", "op": "delete"}]}"#], 400, "invalid_name"),
        case(HISTORY, "/api/v1/collections/c/docs/missing/history", &[], 404, "not_found"),
        case(HISTORY, "/api/v1/collections/c/docs/d/history?limit=0", &[], 400, "bad_request"),
        case(AT, "/api/v1/collections/c/docs/d/versions/not-a-cid", &[], 400, "bad_cid"),
        case(AT, format!("/api/v1/collections/c/docs/other/versions/{v}"), &[], 404, "not_found"),
        case(AT, format!("/api/v1/collections/c/docs/d/versions/{uv}"), &[], 404, "not_found"),
        case(RESTORE, "/api/v1/collections/c/docs/d/restore", &["-d", r#"{"version": 5}"#], 400, "bad_json"),
        case(RESTORE, "/api/v1/collections/c/docs/d/restore", &["-d", r#"{"version": {"/": "zz"}}"#], 400, "bad_cid"),
        case(RESTORE, "/api/v1/collections/c/docs/d/restore", &["-d", &restore_unknown], 404, "not_found"),
        case(BATCH, "/api/v1/batch", &["--data-binary", &f.many_writes], 400, "batch_too_large"),
        case(BATCH, "/api/v1/batch", &["-d", r#"{"operations": []}"#], 400, "bad_json"),
        case(BATCH, "/api/v1/batch", &["-d", r#"{"operations": [{"op": "swap", "collection": "c", "id": "d"}]}"#], 400, "bad_json"),
        case(BATCH, "/api/v1/batch", &["-d", r#"{"operations": [{"op": "set", "collection": "", "id": "d", "fields": {}}]}"#], 400, "invalid_name"),
        case(BATCH, "/api/v1/batch", &["-d", r#"{"operations": [{"op": "update", "collection": "c", "id": "ghost", "fields": {}}]}"#], 404, "not_found"),
        case(BLOBS, "/api/v1/blobs?page=2", &[], 200, ""),
        case(UPLOAD, "/api/v1/blobs", &["-H", "Content-Length: 300000000", "-d", "x"], 413, "body_too_large"),
        case(UPLOAD, "/api/v1/blobs?collection=%01", &["-d", "x"], 400, "invalid_name"),
        case(UPLOAD, "/api/v1/blobs?colection=c", &["-d", "x"], 400, "bad_request"),
        case(BLOB, "/api/v1/blobs/not-a-blob", &[], 400, "bad_blob_id"),
        case(BLOB, format!("/api/v1/blobs/{ub}"), &[], 404, "not_found"),
        case(BLOB, format!("/api/v1/blobs/{b}"), &["-H", "Range: bytes=abc"], 400, "bad_request"),
        case(BLOB, format!("/api/v1/blobs/{b}"), &["-H", "Range: bytes=50-"], 416, "range_not_satisfiable"),
        case(BLOB, format!("/api/v1/blobs/{b}"), &["-H", "Range: bytes=0-1,3-4"], 416, "range_not_satisfiable"),
        case(BLOB_HEAD, "/api/v1/blobs/not-a-blob", &[], 400, ""),
        case(BLOB_HEAD, format!("/api/v1/blobs/{ub}"), &[], 404, ""),
        case(INBOX, "/api/v1/texts/inbox?limit=5000", &[], 400, "page_too_large"),
        case(OUTBOX, "/api/v1/texts/outbox?limit=x", &[], 400, "bad_request"),
        case(SEND, "/api/v1/texts", &["-d", "{"], 400, "bad_json"),
        case(SEND, "/api/v1/texts", &["-d", r#"{"peer": "x", "text": "hi"}"#], 400, "bad_peer"),
        case(SEND, "/api/v1/texts", &["--data-binary", &f.long_text], 413, "body_too_large"),
        case(SEND, "/api/v1/texts", &["-d", &own], 400, "invalid_argument"),
        case(PEERS, "/api/v1/peers", &["-X", "PUT"], 405, "method_not_allowed"),
        case(SYNC, "/api/v1/sync", &["-X", "DELETE"], 405, "method_not_allowed"),
        case(FORCE, "/api/v1/sync", &["-d", r#"{"peer": 7}"#], 400, "bad_json"),
        case(FORCE, "/api/v1/sync", &["-d", r#"{"peer": "nobody"}"#], 400, "bad_peer"),
        case(CHANGES, "/api/v1/changes?limit=5000", &[], 400, "page_too_large"),
        case(CHANGES, "/api/v1/changes?since=-1", &[], 400, "bad_request"),
        case(QUEUE, "/api/v1/queue", &["-X", "POST"], 405, "method_not_allowed"),
        case(TRANSPORTS, "/api/v1/transports/x", &[], 404, "unknown_route"),
        case(RELATIONS, "/api/v1/relations", &["-X", "POST"], 405, "method_not_allowed"),
        case(RELATION_SET, "/api/v1/relations/nobody", &["-d", r#"{"level": "family"}"#], 400, "bad_peer"),
        case(RELATION_SET, format!("/api/v1/relations/{}", f.me), &["-d", r#"{"level": "family"}"#], 400, "invalid_argument"),
        case(RELATION_SET, format!("/api/v1/relations/{}", f.me), &["-d", r#"{"level": "own-device"}"#], 400, "invalid_argument"),
        case(RELATION_SET, "/api/v1/relations/8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm", &["-d", r#"{"level": "best-friend"}"#], 400, "invalid_argument"),
        case(RELATION_SET, "/api/v1/relations/8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm", &["--data-binary", &f.big], 413, "body_too_large"),
        case(RELATION_DEL, "/api/v1/relations/%00", &[], 400, "bad_peer"),
        case(RELATION_DEL, "/api/v1/relations/8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm", &[], 404, "not_found"),
        case(CAPS, "/api/v1/capabilities", &["-X", "PUT"], 405, "method_not_allowed"),
        case(RESTRICT, "/api/v1/capabilities/restricted", &["-d", r#"{"collection": ""}"#], 400, "invalid_name"),
        case(RESTRICT, "/api/v1/capabilities/restricted", &["-d", r#"{"collection": 5}"#], 400, "bad_json"),
        case(GRANT, "/api/v1/capabilities/grants", &["-d", r#"{"collection": "c", "peer": "x", "actions": ["read"]}"#], 400, "bad_peer"),
        case(GRANT, "/api/v1/capabilities/grants", &["-d", r#"{"collection": "c", "peer": "8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm", "actions": []}"#], 400, "invalid_argument"),
        case(GRANT, "/api/v1/capabilities/grants", &["-d", r#"{"collection": "c", "peer": "8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm", "actions": ["fly"]}"#], 400, "invalid_argument"),
        case(GRANT, "/api/v1/capabilities/grants", &["-d", r#"{"collection": "c", "peer": "8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm", "actions": ["read"], "expires_secs": 0}"#], 400, "invalid_argument"),
        case(INSTALL, "/api/v1/capabilities/tokens", &["-d", r#"{"token": "0OIl"}"#], 400, "invalid_argument"),
        case(INSTALL, "/api/v1/capabilities/tokens", &["-d", r#"{"token": "3mJr7AoUXx2Wqd"}"#], 400, "invalid_capability"),
        case(INSTALL, "/api/v1/capabilities/tokens", &["--data-binary", &f.big], 413, "body_too_large"),
        case(REVOKE, "/api/v1/capabilities/tokens/xyz", &[], 400, "invalid_argument"),
    ]
}

/// Without a token, or with an expired session token, every route is 401.
fn every_route_refuses_missing_and_expired_tokens(api: &Api, version: &str) {
    let session = api.call("POST", "/api/v1/sessions", &["-d", r#"{"ttl_secs": 1}"#]);
    let session = session.json()["token"].as_str().unwrap().to_owned();
    let expired = format!("Authorization: Bearer {session}");
    wait_for("the session token to expire", || {
        let r = curl(&["-H", &expired, &format!("{}/api/v1/collections", api.base)]);
        (r.status == 401).then(|| assert_eq!(r.json()["error"]["kind"], "token_expired"))
    });
    for (method, path) in ecomesh_node::api::rest::rest_routes() {
        let path = path
            .replace("{c}", "c")
            .replace("{id}", "d")
            .replace("{peer}", "p")
            .replace("{cid}", version);
        let url = format!("{}{path}", api.base);
        for header in [None, Some(expired.as_str())] {
            let mut args: Vec<&str> = if method == "HEAD" {
                vec!["-I"]
            } else {
                vec!["-X", method]
            };
            if let Some(h) = header {
                args.extend(["-H", h]);
            }
            args.push(&url);
            let r = curl(&args);
            assert_eq!(r.status, 401, "{method} {path} with {header:?}: {}", r.body);
        }
    }
}

/// An upload that sends 1000 bytes and then nothing (curl `-T -` streams
/// stdin, which stays open while the child lives).
fn stalled_upload(api: &Api) -> Child {
    let mut c = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-X", "POST", "-H", &api.auth])
        .args(["-T", "-"])
        .arg(format!("{}/api/v1/blobs", api.base))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.as_mut().unwrap().write_all(&[7u8; 1000]).unwrap();
    c
}

/// Clients that stall uploads hold only their own connections and the
/// upload slots: one more upload is 503 `busy`, other clients are served,
/// and the slots come back when the stalled clients go away.
fn stalled_uploads_do_not_stop_the_node(api: &Api) {
    let mut stalled: Vec<Child> = (0..4).map(|_| stalled_upload(api)).collect();
    wait_for("a fifth upload to be refused as busy", || {
        // A stalled upload that connected while this probe held a slot was
        // refused as busy and ended: start it again, so four hold the slots.
        for c in &mut stalled {
            if matches!(c.try_wait(), Ok(Some(_))) {
                *c = stalled_upload(api);
            }
        }
        let r = api.call("POST", "/api/v1/blobs", &["-d", "x"]);
        (r.status == 503).then(|| assert_eq!(r.json()["error"]["kind"], "busy"))
    });
    let ok = api.call(
        "PUT",
        "/api/v1/collections/c/docs/after",
        &["-d", r#"{"fields": {"still": "serving"}}"#],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let read = api.call("GET", "/api/v1/collections/c/docs/after", &[]);
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["fields"]["still"], "serving");
    assert_eq!(api.call("GET", "/api/v1/status", &[]).status, 200);
    for c in &mut stalled {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    wait_for(
        "uploads accepted again once the stalled ones went away",
        || (api.call("POST", "/api/v1/blobs", &["-d", "x"]).status == 201).then_some(()),
    );
}

#[test]
fn bad_input_on_every_route_is_a_typed_error_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, me) = Node::init(dir.path(), "n");
    n.start(&["--listen", "127.0.0.1:0"]);
    let api = Api {
        base: format!("http://{}", n.api_addr()),
        auth: format!("Authorization: Bearer {}", n.api_token()),
    };
    let fixture = Fixture::new(&api, dir.path(), me);
    let cases = cases(&fixture);
    for (method, path) in ecomesh_node::api::rest::rest_routes() {
        assert!(
            cases.iter().any(|c| c.route == (method, path.as_str())),
            "no hostile case for {method} {path}"
        );
    }
    for c in &cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let r = api.call(c.route.0, &c.path, &args);
        let what = format!("{} {} {:?}", c.route.0, c.path, c.args);
        let what = &what[..what.len().min(300)];
        assert_eq!(r.status, c.status, "{what}: {}", r.body);
        if let Some(kind) = c.kind {
            let e = &r.json()["error"];
            assert_eq!(e["kind"], kind, "{what}: {}", r.body);
            assert!(
                !e["message"].as_str().unwrap_or("").is_empty(),
                "{what}: an error without a message"
            );
        }
    }
    every_route_refuses_missing_and_expired_tokens(&api, &fixture.version);
    stalled_uploads_do_not_stop_the_node(&api);
    n.terminate();
}
