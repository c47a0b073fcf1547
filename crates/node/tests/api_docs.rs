//! Runs every `sh` example of `docs/api.md`, in order, against a fresh node,
//! and checks that every route the API registers is documented with one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::Node;

/// One `sh` example: where it is, what it runs, what it must answer.
struct Example {
    route: String,
    line: usize,
    script: String,
    status: u16,
    bodies: Vec<String>,
}

impl Example {
    fn name(&self) -> String {
        format!("docs/api.md:{} (under {:?})", self.line, self.route)
    }
}

/// The `### METHOD /path` headings and the `sh` blocks under them.
fn parse(doc: &str) -> (Vec<String>, Vec<Example>) {
    let mut headings = Vec::new();
    let mut examples = Vec::new();
    let mut route = String::new();
    let mut block: Option<(usize, Vec<&str>)> = None;
    for (i, line) in doc.lines().enumerate() {
        if let Some((start, lines)) = &mut block {
            if line.trim_end() == "```" {
                let script = lines.join("\n");
                let status = lines
                    .iter()
                    .find_map(|l| l.strip_prefix("# expect: "))
                    .unwrap_or_else(|| {
                        panic!("docs/api.md:{start}: an example without `# expect: STATUS`")
                    })
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("docs/api.md:{start}: bad expected status: {e}"));
                let bodies = lines
                    .iter()
                    .filter_map(|l| l.strip_prefix("# expect-body: "))
                    .map(str::to_owned)
                    .collect();
                examples.push(Example {
                    route: route.clone(),
                    line: *start,
                    script,
                    status,
                    bodies,
                });
                block = None;
            } else {
                lines.push(line);
            }
        } else if line.trim_end() == "```sh" {
            block = Some((i + 1, Vec::new()));
        } else if let Some(h) = line.strip_prefix("### ") {
            route = h.trim().to_owned();
            headings.push(route.clone());
        }
    }
    assert!(block.is_none(), "docs/api.md ends inside a code block");
    (headings, examples)
}

fn doc_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_registered_route_has_an_example_in_docs_api_md() {
    let (_, examples) = parse(&doc_text());
    let mut missing = Vec::new();
    for (method, path) in ecomesh_node::api::documented_routes() {
        let heading = format!("{method} {path}");
        if !examples.iter().any(|e| e.route == heading) {
            missing.push(heading);
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a `### METHOD /path` section and an example in docs/api.md: {missing:#?}"
    );
}

#[test]
fn every_example_in_docs_api_md_answers_as_documented() {
    let (_, examples) = parse(&doc_text());
    assert!(examples.len() > 20, "docs/api.md has too few examples");
    let dir = tempfile::tempdir().unwrap();
    let (mut n, _) = Node::init(dir.path(), "n");
    n.start(&["--listen", "127.0.0.1:0"]);
    let api = format!("http://{}", n.api_addr());
    let token = n.api_token();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    for ex in &examples {
        let script = format!(
            "set -euo pipefail\n\
             curl() {{ command curl -sS --max-time 60 -w '\\n%{{http_code}}\\n' \"$@\"; }}\n\
             {}\n",
            ex.script
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("API", &api)
            .env("TOKEN", &token)
            .env("WORK", &work)
            .current_dir(&work)
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed ({}): {stdout}\n{stderr}",
            ex.name(),
            out.status
        );
        let status = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().parse::<u16>().ok());
        assert_eq!(
            status,
            Some(ex.status),
            "{} answered otherwise than documented:\n{stdout}\n{stderr}",
            ex.name()
        );
        for b in &ex.bodies {
            assert!(
                stdout.contains(b.as_str()),
                "{}: the answer lacks {b:?}:\n{stdout}",
                ex.name()
            );
        }
    }
}
