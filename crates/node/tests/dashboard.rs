//! The web dashboard: served at `/` without a token under a strict policy,
//! and, in a real headless Chromium, a document written through node A's
//! dashboard form appears live on node B's open dashboard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::{Driver, Session};
use common::{Node, curl, ok_json, wait_for};
use serde_json::json;

/// A response's headers (lower-cased names) and body, from `curl -i`.
fn split_response(raw: &str) -> (Vec<(String, String)>, String) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[test]
fn the_dashboard_is_served_without_a_token_under_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, _) = Node::init(dir.path(), "n");
    n.start(&["--listen", "127.0.0.1:0"]);
    let api = n.api_addr();

    let page = curl(&["-i", &format!("http://{api}/")]);
    assert_eq!(page.status, 200, "{}", page.body);
    let (headers, body) = split_response(&page.body);
    assert!(header(&headers, "content-type").starts_with("text/html"));
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        csp.contains(&format!("connect-src 'self' ws://{api}")),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert!(body.contains("/assets/app.js") && body.contains("/assets/errors.js"));

    for (asset, media_type) in [
        ("app.js", "text/javascript"),
        ("errors.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let r = curl(&["-i", &format!("http://{api}/assets/{asset}")]);
        assert_eq!(r.status, 200, "{asset}");
        let (headers, body) = split_response(&r.body);
        assert!(header(&headers, "content-type").starts_with(media_type));
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert!(!body.is_empty());
    }
    let missing = curl(&[&format!("http://{api}/assets/nope.js")]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["kind"], "not_found");
    let rebound = curl(&["-H", "Host: evil.example", &format!("http://{api}/")]);
    assert_eq!(rebound.status, 403);
    assert_eq!(rebound.json()["error"]["kind"], "forbidden_host");

    // `ecomesh dashboard` links to this node with a session token the API takes.
    let link = ok_json(&n.data, &["dashboard", "--hours", "1"]);
    let url = link["url"].as_str().unwrap();
    let token = url
        .strip_prefix(&format!("http://{api}/#token="))
        .unwrap_or_else(|| panic!("{url} is not this node's dashboard"));
    assert!(
        token.starts_with("s1."),
        "a session token, not the API token"
    );
    let status = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("http://{api}/api/v1/status"),
    ]);
    assert_eq!(status.status, 200, "{}", status.body);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = link["expires"].as_u64().unwrap();
    assert!((now + 3500..=now + 3601).contains(&expires), "{expires}");
}

/// How long the page may take to show what the test waits for.
const PAGE_DEADLINE: Duration = Duration::from_secs(60);

/// Opens `node`'s dashboard through the link `ecomesh dashboard` prints and
/// waits until it shows the node's identity; checks the token left the
/// address bar.
fn open_dashboard(page: &Session<'_>, node: &Node, peer_id: &str) {
    let link = ok_json(&node.data, &["dashboard"]);
    page.goto(link["url"].as_str().unwrap());
    page.wait_for_script(
        PAGE_DEADLINE,
        "the dashboard to show the node's peer id",
        "const c = document.querySelector('#node-summary code'); \
         return !document.getElementById('main').hidden && c && c.title === arguments[0]",
        &[json!(peer_id)],
    );
    let url = page.url();
    assert!(
        !url.contains("token"),
        "the token stays in the address bar: {url}"
    );
    let kept = page.execute("return sessionStorage.getItem('ecomesh.token')", &[]);
    assert!(
        kept.as_str().is_some_and(|t| t.starts_with("s1.")),
        "{kept}"
    );
}

/// Opens a live view of `collection` on `page` and waits for its first snapshot.
fn watch(page: &Session<'_>, collection: &str) {
    page.fill("#open-collection", collection);
    page.click("#open-form button");
    page.wait_for_script(
        PAGE_DEADLINE,
        &format!("the live view of {collection} to get its first snapshot"),
        "const v = document.querySelector('.live-view[data-collection=\"' + arguments[0] + '\"]'); \
         return v && v.dataset.state === 'live'",
        &[json!(collection)],
    );
}

/// The row of `id` in `page`'s live view of `collection` when it contains `text`.
const ROW_WITH_TEXT: &str = "const row = document.querySelector(\
     '.live-view[data-collection=\"' + arguments[0] + '\"] tr[data-doc-id=\"' + arguments[1] + '\"]'); \
     return row && row.textContent.includes(arguments[2]) ? row.textContent : null";

/// Fails with the page's script errors and severe console entries, if any;
/// prints the rest of the console.
fn assert_no_script_errors(name: &str, page: &Session<'_>) {
    let errors = page.script_errors();
    let log = page.browser_log();
    for e in &log {
        println!("{name} console {} {}: {}", e.level, e.source, e.message);
    }
    let severe: Vec<_> = log.iter().filter(|e| e.level == "SEVERE").collect();
    assert!(
        errors.is_empty() && severe.is_empty(),
        "{name}'s page reported script errors {errors:?} and severe console entries {severe:?}"
    );
}

#[test]
fn a_document_written_on_a_dashboard_appears_live_on_the_other() {
    let started = Instant::now();
    let test = "a_document_written_on_a_dashboard_appears_live_on_the_other";
    let Some((chromium, chromedriver)) = browser::programs(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut a, id_a) = Node::init(dir.path(), "a");
    let (mut b, id_b) = Node::init(dir.path(), "b");
    let wired_a = a.start(&["--listen", "127.0.0.1:0"]);
    b.start(&["--listen", "127.0.0.1:0", "--peer", &wired_a]);
    wait_for("A and B to reach each other", || {
        (a.peers().contains(&id_b) && b.peers().contains(&id_a)).then_some(())
    });

    let driver = Driver::start(&chromium, &chromedriver);
    let page_a = driver.session("a");
    let page_b = driver.session("b");
    open_dashboard(&page_a, &a, &id_a);
    open_dashboard(&page_b, &b, &id_b);
    // Every panel shows the routes' answers, and each node lists the other.
    for (page, other) in [(&page_a, &id_b), (&page_b, &id_a)] {
        page.wait_for_script(
            PAGE_DEADLINE,
            "every panel to render its route and the peer to be listed",
            "const bodies = [...document.querySelectorAll('[data-route]')]; \
             return bodies.every((b) => b.dataset.state === 'ok') && \
               !!document.querySelector('#panel-peers code[title=\"' + arguments[0] + '\"]')",
            &[json!(other)],
        );
    }

    watch(&page_a, "notes");
    watch(&page_b, "notes");
    page_b.execute("window.__sameDocument = true", &[]);

    page_a.fill("#write-collection", "notes");
    page_a.fill("#write-id", "hello");
    page_a.fill(
        "#write-fields",
        r#"{"text": "written in A's dashboard", "n": 1}"#,
    );
    page_a.click("#write-submit");
    let written = Instant::now();
    let (result, _) = page_a.wait_for_script(
        PAGE_DEADLINE,
        "A's form to report the write",
        "const r = document.getElementById('write-result'); \
         return r.dataset.state === 'ok' || r.dataset.state === 'error' \
           ? r.dataset.state + ': ' + r.textContent : null",
        &[],
    );
    let result = result.as_str().unwrap().to_owned();
    assert!(result.starts_with("ok: Wrote notes/hello"), "{result}");
    page_a.wait_for_script(
        PAGE_DEADLINE,
        "the document in A's own live view",
        ROW_WITH_TEXT,
        &[
            json!("notes"),
            json!("hello"),
            json!("written in A's dashboard"),
        ],
    );
    let (row, _) = page_b.wait_for_script(
        PAGE_DEADLINE,
        "the document written on A to appear on B's open page",
        ROW_WITH_TEXT,
        &[
            json!("notes"),
            json!("hello"),
            json!("written in A's dashboard"),
        ],
    );
    let latency = written.elapsed();
    assert!(row.as_str().unwrap().contains("\"n\":1"), "{row}");
    assert_eq!(
        page_b.execute("return window.__sameDocument === true", &[]),
        json!(true),
        "B's page reloaded"
    );
    assert_eq!(
        b.local_fields("notes", "hello"),
        Some(json!({"text": "written in A's dashboard", "n": 1}))
    );

    // The polled panels catch up too: B lists the collection it received.
    page_b.wait_for_script(
        PAGE_DEADLINE,
        "B's collections panel to list notes with one document",
        "return [...document.querySelectorAll('#panel-collections tbody tr')] \
           .some((r) => r.cells[0].textContent === 'notes' && r.cells[1].textContent === '1')",
        &[],
    );

    let shots = browser::target_dir().join("dashboard-screenshots");
    for (name, page) in [("a", &page_a), ("b", &page_b)] {
        let path = shots.join(format!("{name}.png"));
        page.screenshot(&path);
        println!("screenshot of {name}'s dashboard: {}", path.display());
    }
    assert_no_script_errors("A", &page_a);
    assert_no_script_errors("B", &page_b);
    println!(
        "write through A's form to B's open page: {latency:?}; whole test {:?}",
        started.elapsed()
    );
}

/// The check above can fail: an uncaught exception and an inline script the
/// policy blocks reach the page's collector and its banner; the exception and
/// a rejected promise reach the browser log. (Scripts injected over WebDriver
/// count as another origin: the page sees their exceptions as "Script error."
/// and not their rejections, which the browser log still shows.)
#[test]
fn script_errors_in_the_page_are_caught() {
    let test = "script_errors_in_the_page_are_caught";
    let Some((chromium, chromedriver)) = browser::programs(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut n, id) = Node::init(dir.path(), "n");
    n.start(&["--listen", "127.0.0.1:0"]);
    let driver = Driver::start(&chromium, &chromedriver);
    let page = driver.session("errors");
    open_dashboard(&page, &n, &id);
    assert!(page.script_errors().is_empty());
    page.execute(
        "setTimeout(() => { throw new Error('thrown on purpose'); }, 0); \
         setTimeout(() => { Promise.reject(new Error('rejected on purpose')); }, 0); \
         const s = document.createElement('script'); \
         s.textContent = 'window.inlineRan = true'; \
         document.body.append(s);",
        &[],
    );
    let (errors, _) = page.wait_for_script(
        PAGE_DEADLINE,
        "the collector to catch the exception and the blocked script",
        "const e = window.__ecomeshErrors; return e.length >= 2 ? e : null",
        &[],
    );
    let errors = errors.to_string();
    assert!(errors.contains("error: "), "{errors}");
    assert!(errors.contains("content security policy"), "{errors}");
    assert_eq!(
        page.execute("return window.inlineRan === true", &[]),
        json!(false)
    );
    let banner = page.execute(
        "const b = document.getElementById('script-errors'); return b.hidden ? null : b.textContent",
        &[],
    );
    assert!(
        banner
            .as_str()
            .is_some_and(|t| t.contains("content security policy")),
        "{banner}"
    );
    let severe: Vec<String> = page
        .browser_log()
        .into_iter()
        .filter(|e| e.level == "SEVERE")
        .map(|e| e.message)
        .collect();
    for what in [
        "thrown on purpose",
        "rejected on purpose",
        "Content Security Policy",
    ] {
        assert!(
            severe.iter().any(|m| m.contains(what)),
            "the browser log lacks {what:?}: {severe:?}"
        );
    }
}
