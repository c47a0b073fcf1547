//! `ecomesh`: run a node, and talk to the running node from the command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ecomesh_identity::AccessPolicy;
use ecomesh_node::config;
use ecomesh_node::control::{self, Request, Response};
use ecomesh_node::daemon::{self, DEFAULT_PORT, LoraPreset, NodeOptions, TransportSpec};
use ecomesh_node::human;
use ecomesh_node::paths::DataDir;
use ecomesh_node::progress::Progress;
use ecomesh_types::PeerId;

/// The global allocator: mimalloc. The store's write path (sled's
/// copy-on-write pages and the version, state and Merkle encoders) is
/// allocation-heavy; with glibc's malloc a single-document write took about
/// twice the CPU time (issue 16, docs/benchmarks.md "Store writes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ecomesh: an offline-first data layer over any network.
///
/// Run `ecomesh node` (it initialises the data directory on first run), then
/// use `peers`, `send`, `inbox`, `doc` and `status` from another terminal.
/// `node` reads its flags' values from `ecomesh.toml` in the data directory;
/// flags given on the command line win.
#[derive(Debug, Parser)]
#[command(name = "ecomesh", version)]
struct Cli {
    /// Data directory [default: $ECOMESH_DATA, else $XDG_DATA_HOME/ecomesh, else ~/.local/share/ecomesh].
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Print answers as JSON (one document) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per run: the size of `Node`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Create the data directory and a new identity (Ed25519 key).
    Init,
    /// Run the node in the foreground until Ctrl-C or SIGTERM; on first run,
    /// create the data directory and identity (as `init` does). Flags not given
    /// are read from `ecomesh.toml` in the data directory when it exists.
    Node {
        /// Transports to run, comma-separated: wired, internet, lora:DEVICE,
        /// ble or ble:ADAPTER (Bluetooth LE through BlueZ; adapter hci0 unless named)
        /// (for example --transports internet,wired,lora:/dev/ttyUSB0,ble:hci0).
        #[arg(
            long,
            value_name = "LIST",
            value_delimiter = ',',
            default_value = "wired"
        )]
        transports: Vec<TransportSpec>,
        /// Where to listen (repeatable): HOST:PORT for the wired transport
        /// [default: 0.0.0.0:7733], a multiaddr for the internet transport
        /// [default: /ip4/0.0.0.0/tcp/7734 and /ip4/0.0.0.0/udp/7734/quic-v1].
        #[arg(long, value_name = "ADDR")]
        listen: Vec<String>,
        /// Internet bootstrap peer (repeatable): a multiaddr ending in `/p2p/<id>`,
        /// as another node's `ecomesh status` prints it.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
        /// Internet relay to reserve a circuit on (repeatable), so peers that
        /// cannot reach this node directly connect through it.
        #[arg(long, value_name = "MULTIADDR")]
        relay: Vec<String>,
        /// Serve as a circuit relay for other internet peers.
        #[arg(long)]
        relay_server: bool,
        /// LoRa radio settings: eu868 (Meshtastic LongFast under the EU868 duty
        /// cycle) or sim (the bundled radio simulator).
        #[arg(long, value_name = "PRESET", default_value = "eu868")]
        lora_preset: LoraPreset,
        /// A secret all LoRa nodes of your deployment share: it authenticates
        /// broadcast frames (beacons) as coming from a member [default: public].
        #[arg(
            long,
            value_name = "TEXT",
            env = "ECOMESH_LORA_SECRET",
            hide_env_values = true
        )]
        lora_secret: Option<String>,
        /// Also dial this address (repeatable); redialled whenever the link drops.
        #[arg(long = "peer", value_name = "ADDR")]
        peers: Vec<SocketAddr>,
        /// Do not announce or browse with mDNS.
        #[arg(long)]
        no_mdns: bool,
        /// Use mDNS only on the interface that has this address.
        #[arg(long, value_name = "IP")]
        mdns_ip: Option<IpAddr>,
        /// Accept only these peers (repeatable); everyone else is refused.
        #[arg(long = "allow", value_name = "PEER", conflicts_with = "block")]
        allow: Vec<PeerId>,
        /// Refuse these peers (repeatable).
        #[arg(long = "block", value_name = "PEER")]
        block: Vec<PeerId>,
        /// A relationship reach decides with, PEER=LEVEL (repeatable; LEVEL is family,
        /// neighbour, municipal or bioregional). In ecomesh.toml: a `[relationships]`
        /// table, e.g. family = ["PEER", ...]. `ecomesh relation set` wins over it.
        #[arg(long = "relation", value_name = "PEER=LEVEL", value_parser = ecomesh_node::relation::parse_relation_flag)]
        relation: Vec<(PeerId, ecomesh_sync::Trust)>,
        /// The reach of a collection, COLLECTION=LEVEL (repeatable; LEVEL is private, local,
        /// neighbourhood, municipal, bioregional or commons, the default): who may be sent
        /// and served it, judged by relationships.
        #[arg(long = "reach", value_name = "COLLECTION=LEVEL", value_parser = ecomesh_node::relation::parse_reach_flag)]
        reach: Vec<(String, ecomesh_sync::Reach)>,
        /// Seconds of silence before a link is probed, and again before it is dropped.
        #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
        keepalive: u64,
        /// Longest wait, in seconds, between redials of a lost peer.
        #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        redial_max: u64,
        /// Most undelivered texts the outbox accepts; `send` is refused beyond it.
        #[arg(long, value_name = "N", default_value_t = daemon::DEFAULT_OUTBOX_MAX, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
        outbox_max: usize,
        /// Most messages in the store-and-forward buffer (tests use a small one).
        #[arg(long, hide = true, value_name = "N", default_value_t = ecomesh_mesh::buffer::DEFAULT_MAX_MESSAGES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
        buffer_messages: usize,
        /// Where the HTTP API and dashboard listen (loopback; port 0 picks a free port).
        #[arg(long, value_name = "HOST:PORT", default_value = ecomesh_node::api::DEFAULT_API_ADDR)]
        api: SocketAddr,
        /// Allow --api on an address other than loopback. Risky: anyone who reaches
        /// it and learns the token controls the node, and the API is plain HTTP.
        #[arg(long)]
        api_expose: bool,
        /// Run without the HTTP API and dashboard.
        #[arg(long, conflicts_with_all = ["api", "api_expose"])]
        no_api: bool,
        #[command(flatten)]
        primary: ecomesh_node::hybrid::PrimaryArgs,
    },
    /// The HTTP API: its token.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Print a link to the running node's web dashboard, with a session token that expires.
    Dashboard {
        /// How long the link's token lasts, in hours.
        #[arg(long, value_name = "HOURS", default_value_t = ecomesh_node::api::dashboard::DEFAULT_LINK_TTL.as_secs() / 3600, value_parser = clap::value_parser!(u64).range(1..=168))]
        hours: u64,
    },
    /// List the peers reachable now.
    Peers,
    /// Send TEXT to PEER, sealed end to end; queued and delivered later if PEER is away.
    Send {
        /// The recipient's peer id (from `ecomesh peers`).
        peer: String,
        /// The message.
        text: String,
    },
    /// List received messages, oldest first.
    Inbox,
    /// List sent messages and whether they were delivered.
    Outbox,
    /// Show the node's identity, address, peers and queues.
    Status,
    /// Read and write documents in the node's store.
    #[command(subcommand)]
    Doc(DocCommand),
    /// Store, fetch and list content-addressed blobs (files).
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Back up the node's identity under a passphrase, or restore it on a new device.
    #[command(subcommand)]
    Identity(ecomesh_node::backup::IdentityCommand),
    /// Write the node's versions (and with --blobs its blobs) to a CARv1 file (sneakernet).
    Export(ecomesh_node::sneakernet::ExportArgs),
    /// Verify and merge a CARv1 file written by `ecomesh export` on any node.
    Import(ecomesh_node::sneakernet::ImportArgs),
    /// Link another device of yours (own devices share one user for reach and trust).
    #[command(subcommand)]
    Link(ecomesh_node::link::LinkCommand),
    /// Set, remove and list relationships (family, neighbours, ...) that reach decides with.
    #[command(subcommand)]
    Relation(ecomesh_node::relation::RelationCommand),
    /// Restrict collections and grant, install, revoke and list capability tokens.
    #[command(subcommand)]
    Cap(ecomesh_node::relation::CapCommand),
    /// List the versions the node took in (its stream), after a position.
    Changes {
        /// Show entries after this position (0: from the start).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Most entries shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum ApiCommand {
    /// Print the API's bearer token (made now if the node never started).
    Token,
}

#[derive(Debug, Subcommand)]
enum DocCommand {
    /// Write a document: FIELDS is a JSON object; replaces the document unless --merge.
    Put {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The fields, as a JSON object, e.g. '{"title":"milk","qty":2}'.
        fields: String,
        /// Merge the fields into the existing document.
        #[arg(long)]
        merge: bool,
    },
    /// Print a document.
    Get {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Delete a document (recorded as a tombstone version).
    Delete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// List the live documents of a collection.
    List {
        /// The collection.
        collection: String,
    },
    /// Query a collection: filters, order, one page at a time.
    ///
    /// Example: ecomesh doc query expenses --where 'amount>5'
    /// --where 'tags array-contains food' --order-by amount:desc --limit 10
    Query {
        /// The collection.
        collection: String,
        #[command(flatten)]
        clauses: QueryClauses,
        /// Most documents in the page [default: 100, at most 1000].
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Continue after this cursor (printed after a full page).
        #[arg(long, value_name = "CURSOR")]
        start_after: Option<String>,
    },
    /// Print a document (with ID) or a query's results now and after every
    /// change, until Ctrl-C.
    Watch {
        /// The collection.
        collection: String,
        /// Watch this document instead of a query.
        #[arg(conflicts_with_all = ["wheres", "order_by", "limit"])]
        id: Option<String>,
        #[command(flatten)]
        clauses: QueryClauses,
        /// Most documents in each snapshot [default: 100, at most 1000].
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// List a document's versions, oldest first, with their authors and times.
    History {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Write, as a new version, the content a document had at VERSION.
    Restore {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The version's CID (from `ecomesh doc history`).
        version: String,
    },
}

/// The filters and order of `doc query` and `doc watch`.
#[derive(Debug, clap::Args)]
struct QueryClauses {
    /// A filter, FIELD OP VALUE (repeatable): OP is one of == != < <= > >=
    /// in not-in array-contains array-contains-any (word operators between
    /// spaces); VALUE is JSON when it parses as JSON, else text.
    #[arg(long = "where", value_name = "CLAUSE")]
    wheres: Vec<String>,
    /// Order by FIELD, ascending, or FIELD:desc (repeatable).
    #[arg(long, value_name = "FIELD[:desc]")]
    order_by: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum BlobCommand {
    /// Store FILE as a blob and replicate it; prints its id.
    Put {
        /// The file.
        file: PathBuf,
        /// The collection whose replication factor, pins and reach apply.
        #[arg(long, default_value = "blobs")]
        collection: String,
    },
    /// Fetch blob ID (locally, else from peers) into FILE.
    Get {
        /// The blob id (from `ecomesh blob put` or `ecomesh blob list`).
        id: String,
        /// Where to write it.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// List the blobs this node knows, with the pieces it holds.
    List,
    /// Delete local pieces that are unpinned, older than the TTL (30 days) and
    /// confirmed on enough other peers (the node also does this hourly).
    Gc,
}

fn main() -> ExitCode {
    match parse().and_then(|(cli, config)| run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn out(line: impl std::fmt::Display) {
    ecomesh_node::output::line(line);
}

/// The command line, with `ecomesh node`'s flags completed from `ecomesh.toml`.
fn parse() -> Result<(Cli, Option<config::Loaded>)> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Some(given) = matches.subcommand_matches("node") else {
        return Ok((cli, None));
    };
    let data = DataDir::resolve(cli.data.clone())?;
    let command = Cli::command();
    let node = command
        .find_subcommand("node")
        .ok_or_else(|| anyhow!("the node subcommand is missing"))?;
    let Some(loaded) = config::load(&data.root().join(config::CONFIG_FILE), node, given)? else {
        return Ok((cli, None));
    };
    if loaded.args.is_empty() {
        return Ok((cli, Some(loaded)));
    }
    let argv = std::env::args_os().chain(loaded.args.iter().map(Into::into));
    let matches = Cli::command()
        .try_get_matches_from(argv)
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(|e| anyhow!("{}: {}", loaded.path.display(), e.to_string().trim_end()))?;
    Ok((matches, Some(loaded)))
}

fn run(cli: Cli, config: Option<config::Loaded>) -> Result<()> {
    let data = DataDir::resolve(cli.data)?;
    match cli.command {
        Command::Init => {
            let id = daemon::init(&data)?;
            if cli.json {
                out(serde_json::json!({ "peer_id": id.to_string(), "data_dir": data.root() }));
            } else {
                out(format!("initialised {}", data.root().display()));
                out(format!("peer id {id}"));
                out("next: ecomesh node");
            }
            Ok(())
        }
        Command::Node {
            transports,
            listen,
            bootstrap,
            relay,
            relay_server,
            lora_preset,
            lora_secret,
            peers,
            no_mdns,
            mdns_ip,
            allow,
            block,
            relation,
            reach,
            keepalive,
            redial_max,
            outbox_max,
            buffer_messages,
            api,
            api_expose,
            no_api,
            primary,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            if !data.identity().exists() {
                let id = daemon::init(&data)?;
                tracing::info!(data = %data.root().display(), peer_id = %id,
                    "initialised a new data directory (first run): new identity");
            }
            match &config {
                Some(c) => tracing::info!(
                    file = %c.path.display(),
                    keys = ?c.used,
                    overridden_by_flags = ?c.overridden,
                    "loaded the config file"
                ),
                None => tracing::info!(
                    file = %data.root().join(config::CONFIG_FILE).display(),
                    "no config file; flags and defaults only"
                ),
            }
            let policy = if !allow.is_empty() {
                AccessPolicy::allow_only(allow)
            } else if !block.is_empty() {
                AccessPolicy::block(block)
            } else {
                AccessPolicy::Open
            };
            let (listen, internet_listen) = daemon::split_listen(&listen, &transports)?;
            let options = NodeOptions {
                transports,
                listen: listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
                internet_listen,
                bootstrap: daemon::parse_multiaddrs("--bootstrap", &bootstrap)?,
                relays: daemon::parse_multiaddrs("--relay", &relay)?,
                relay_server,
                lora_preset,
                lora_secret,
                peers,
                mdns: !no_mdns,
                mdns_ip,
                policy,
                keepalive: Duration::from_secs(keepalive),
                redial_max: Duration::from_secs(redial_max),
                buffer_messages,
                outbox_max,
                relationships: relation,
                reach,
                api: (!no_api).then_some(ecomesh_node::api::ApiOptions {
                    addr: api,
                    expose: api_expose,
                }),
                primary: primary.options()?,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(daemon::run(data, options, shutdown_signal()))
        }
        Command::Api(ApiCommand::Token) => {
            data.create()?;
            let token = ecomesh_node::api::auth::Token::load_or_create(&data.api_token())?;
            if cli.json {
                out(serde_json::json!({ "token": token.as_str() }));
            } else {
                out(token.as_str());
            }
            Ok(())
        }
        Command::Dashboard { hours } => {
            let link =
                ecomesh_node::api::dashboard::link(&data, Duration::from_secs(hours * 3600))?;
            if cli.json {
                out(serde_json::to_value(&link)?);
            } else {
                out(&link.url);
            }
            Ok(())
        }
        Command::Identity(c) => ecomesh_node::backup::command(&data, c, cli.json),
        Command::Export(a) => ecomesh_node::sneakernet::export_command(&data, a, cli.json),
        Command::Import(a) => ecomesh_node::sneakernet::import_command(&data, a, cli.json),
        Command::Doc(d) => doc_command(d, &data, cli.json),
        Command::Blob(b) => blob_command(b, &data, cli.json),
        Command::Link(l) => ecomesh_node::link::link_command(&data, l, cli.json),
        Command::Relation(r) => ecomesh_node::relation::relation_command(&data, r, cli.json),
        Command::Cap(c) => ecomesh_node::relation::cap_command(&data, c, cli.json),
        other => control_command(other, &data, cli.json),
    }
}

/// A command answered by the running node over its control socket.
fn control_command(command: Command, data: &DataDir, json_out: bool) -> Result<()> {
    let ask = |req: Request| control::call(&data.checked_socket()?, &req);
    match command {
        Command::Peers => match ask(Request::Peers)? {
            Response::Peers { peers } if json_out => json(&peers),
            Response::Peers { peers } => {
                if peers.is_empty() {
                    out("no peers reachable");
                }
                for p in peers {
                    out(format!(
                        "{}  {}  {}  reputation {:.2}",
                        p.peer_id,
                        p.transports.join(","),
                        p.address.as_deref().unwrap_or("-"),
                        p.reputation
                    ));
                }
                Ok(())
            }
            other => unexpected(&other),
        },
        Command::Send { peer, text } => match ask(Request::Send { peer, text })? {
            r @ Response::Sent { .. } if json_out => json(&r),
            Response::Sent {
                id,
                outcome,
                transport,
            } => {
                match transport {
                    Some(t) => out(format!("{id} {outcome} over {t}")),
                    None => out(format!(
                        "{id} {outcome}: the peer is not reachable now; it is delivered when it appears"
                    )),
                }
                Ok(())
            }
            other => unexpected(&other),
        },
        Command::Inbox => match ask(Request::Inbox)? {
            Response::Inbox { messages } if json_out => json(&messages),
            Response::Inbox { messages } => {
                if messages.is_empty() {
                    out("inbox empty");
                }
                let now = human::now_ms();
                for m in messages {
                    out(format!(
                        "{}  from {}: {}",
                        human::time(m.received_ms, now),
                        m.from,
                        m.text
                    ));
                }
                Ok(())
            }
            other => unexpected(&other),
        },
        Command::Outbox => match ask(Request::Outbox)? {
            Response::Outbox { messages } if json_out => json(&messages),
            Response::Outbox { messages } => {
                if messages.is_empty() {
                    out("outbox empty");
                }
                let now = human::now_ms();
                for m in messages {
                    out(format!(
                        "{}  to {} [{}]: {}",
                        human::time(m.sent_ms, now),
                        m.to,
                        m.status,
                        m.text
                    ));
                }
                Ok(())
            }
            other => unexpected(&other),
        },
        Command::Changes { since, limit } => match ask(Request::Changes { since, limit })? {
            r @ Response::Changes { .. } if json_out => json(&r),
            Response::Changes {
                entries,
                next,
                more,
            } => {
                if entries.is_empty() {
                    out(format!("no changes after position {since}"));
                }
                let now = human::now_ms();
                for e in entries {
                    let when = if e.time_ms == 0 {
                        "-".to_owned()
                    } else {
                        human::time(e.time_ms, now)
                    };
                    out(format!(
                        "{:>6}  {:<8}  {}/{}  {}  {when}  from {}",
                        e.position, e.kind, e.collection, e.id, e.version, e.source
                    ));
                }
                if more {
                    out(format!("more: ecomesh changes --since {next}"));
                }
                Ok(())
            }
            other => unexpected(&other),
        },
        Command::Status => status_command(&ask, json_out),
        Command::Init
        | Command::Node { .. }
        | Command::Api(_)
        | Command::Identity(_)
        | Command::Export(_)
        | Command::Import(_)
        | Command::Doc(_)
        | Command::Blob(_)
        | Command::Link(_)
        | Command::Relation(_)
        | Command::Cap(_)
        | Command::Dashboard { .. } => {
            bail!(
                "init, node, api, dashboard, identity, export, import, doc and blob are dispatched in run()"
            )
        }
    }
}

/// `ecomesh doc ...`.
fn doc_command(d: DocCommand, data: &DataDir, json_out: bool) -> Result<()> {
    let socket = data.checked_socket()?;
    let req = match d {
        DocCommand::Put {
            collection,
            id,
            fields,
            merge,
        } => Request::DocPut {
            collection,
            id,
            json: fields,
            merge,
        },
        DocCommand::Get { collection, id } => Request::DocGet { collection, id },
        DocCommand::Delete { collection, id } => Request::DocDelete { collection, id },
        DocCommand::List { collection } => Request::DocList { collection },
        DocCommand::Query {
            collection,
            clauses,
            limit,
            start_after,
        } => Request::DocQuery {
            collection,
            query: ecomesh_node::clauses::query_json(
                &clauses.wheres,
                &clauses.order_by,
                limit,
                start_after.as_deref(),
            )?,
        },
        DocCommand::Watch {
            collection,
            id,
            clauses,
            limit,
        } => return doc_watch(&socket, collection, id, &clauses, limit, json_out),
        DocCommand::History { collection, id } => Request::DocHistory { collection, id },
        DocCommand::Restore {
            collection,
            id,
            version,
        } => Request::DocRestore {
            collection,
            id,
            version,
        },
    };
    match control::call(&socket, &req)? {
        r @ (Response::Written { .. }
        | Response::Documents { .. }
        | Response::Page { .. }
        | Response::History { .. })
            if json_out =>
        {
            json(&r)
        }
        Response::Written { version, root_cid } => {
            out(format!("version {version}"));
            out(format!("root cid {root_cid}"));
            Ok(())
        }
        Response::Documents { documents } => {
            if documents.is_empty() {
                bail!("no such document");
            }
            for d in documents {
                out(format!("{}/{}  {}", d.collection, d.id, d.fields));
            }
            Ok(())
        }
        Response::Page {
            documents,
            next_cursor,
        } => {
            if documents.is_empty() {
                out("no documents match");
            }
            for d in documents {
                out(format!("{}/{}  {}", d.collection, d.id, d.fields));
            }
            if let Some(c) = next_cursor {
                out(format!("more: --start-after {c}"));
            }
            Ok(())
        }
        Response::History { versions } => {
            if versions.is_empty() {
                bail!("no such document: it has no versions here");
            }
            let now = human::now_ms();
            for v in versions {
                let merge = match v.parents.len() {
                    0 | 1 => String::new(),
                    n => format!("  (merges {n} versions)"),
                };
                out(format!(
                    "{}  {}  by {}{merge}",
                    v.version,
                    human::time(v.time_ms, now),
                    v.author
                ));
            }
            Ok(())
        }
        other => unexpected(&other),
    }
}

/// `ecomesh doc watch`: one snapshot per change until Ctrl-C (or the node stops).
fn doc_watch(
    socket: &std::path::Path,
    collection: String,
    id: Option<String>,
    clauses: &QueryClauses,
    limit: Option<usize>,
    json_out: bool,
) -> Result<()> {
    let query = match id {
        Some(_) => None,
        None => Some(ecomesh_node::clauses::query_json(
            &clauses.wheres,
            &clauses.order_by,
            limit,
            None,
        )?),
    };
    let one_doc = id.is_some();
    let req = Request::DocWatch {
        collection: collection.clone(),
        id: id.clone(),
        query,
    };
    let last = control::call_stream(socket, &req, |item| {
        let Response::Snapshot {
            documents,
            pending_writes,
            time_ms,
        } = &item
        else {
            return Ok(());
        };
        if json_out {
            out(serde_json::to_string(&item)?);
            return Ok(());
        }
        let at = human::date(*time_ms);
        let pending = if *pending_writes {
            "  (pending writes)"
        } else {
            ""
        };
        if one_doc {
            match documents.first() {
                Some(d) => out(format!(
                    "{at}  {}/{}  {}{pending}",
                    d.collection, d.id, d.fields
                )),
                None => out(format!(
                    "{at}  {collection}/{}  (absent){pending}",
                    id.as_deref().unwrap_or_default()
                )),
            }
        } else {
            out(format!("{at}  {} documents{pending}", documents.len()));
            for d in documents {
                out(format!("  {}/{}  {}", d.collection, d.id, d.fields));
            }
        }
        Ok(())
    })?;
    unexpected(&last)
}

/// `ecomesh blob ...`.
fn blob_command(b: BlobCommand, data: &DataDir, json_out: bool) -> Result<()> {
    let socket = data.checked_socket()?;
    let absolute = |p: PathBuf| -> Result<String> {
        let p = if p.is_absolute() {
            p
        } else {
            std::env::current_dir()?.join(p)
        };
        p.into_os_string()
            .into_string()
            .map_err(|p| anyhow::anyhow!("{} is not valid UTF-8", p.to_string_lossy()))
    };
    let (req, label) = match b {
        BlobCommand::Put { file, collection } => (
            Request::BlobPut {
                path: absolute(file)?,
                collection,
                progress: true,
            },
            "blob put",
        ),
        BlobCommand::Get { id, output } => (
            Request::BlobGet {
                id,
                path: absolute(output)?,
                progress: true,
            },
            "blob get",
        ),
        BlobCommand::List => (Request::BlobList, ""),
        BlobCommand::Gc => (Request::BlobGc, ""),
    };
    let mut bar: Option<(String, Progress)> = None;
    let answer = control::call_stream(&socket, &req, |item| {
        if let Response::Progress { stage, done, total } = item {
            if bar.as_ref().is_none_or(|(s, _)| *s != stage) {
                if let Some((_, old)) = bar.take() {
                    old.finish("done");
                }
                bar = Some((
                    stage.clone(),
                    Progress::bytes(&format!("{label}: {stage}"), total),
                ));
            }
            if let Some((_, p)) = &bar {
                p.set(done);
            }
        }
        Ok(())
    });
    if let Some((_, p)) = bar {
        p.finish(if answer.is_ok() { "done" } else { "failed" });
    }
    match answer? {
        r @ (Response::Blob(_) | Response::Blobs { .. } | Response::BlobGc { .. }) if json_out => {
            json(&r)
        }
        Response::Blob(b) => {
            out(blob_line(&b));
            Ok(())
        }
        Response::Blobs { blobs } => {
            if blobs.is_empty() {
                out("no blobs");
            }
            for b in blobs {
                out(blob_line(&b));
            }
            Ok(())
        }
        Response::BlobGc {
            deleted,
            freed_bytes,
            kept,
        } => {
            out(format!(
                "deleted {deleted} pieces ({} freed), kept {kept}",
                human::size(freed_bytes)
            ));
            Ok(())
        }
        other => unexpected(&other),
    }
}

fn blob_line(b: &control::BlobRow) -> String {
    format!(
        "{}  {}  {}  {}/{} pieces held  ({})",
        b.id,
        human::size(b.len),
        b.encoding,
        b.held,
        b.pieces,
        b.collection
    )
}

/// `ecomesh status`.
fn status_command(ask: &dyn Fn(Request) -> Result<Response>, json_out: bool) -> Result<()> {
    match ask(Request::Status)? {
        Response::Status(s) if json_out => json(&s),
        Response::Status(s) => {
            out(format!("peer id     {}", s.peer_id));
            out(format!("data        {}", s.data_dir));
            out(format!(
                "listen      {}",
                s.listen.as_deref().unwrap_or("-")
            ));
            for a in &s.internet_listen {
                out(format!("internet    {a}"));
            }
            out(format!("transports  {}", s.transports.join(",")));
            out(format!("peers       {}", s.peers));
            out(format!("buffered    {}", s.buffered));
            out(format!(
                "waiting     {} (in the outbox, for buffer room)",
                s.waiting
            ));
            out(format!("to sync     {}", s.sync_pending));
            out(format!("inbox       {}", s.inbox));
            out(format!(
                "delivered   {} (undelivered {})",
                s.delivered, s.undelivered
            ));
            out(format!("root cid    {}", s.root_cid));
            out(format!("replicated  {}", s.replicated_root));
            out(format!("stream      {} versions", s.stream_head));
            let started = human::now_ms().saturating_sub(s.uptime_secs.saturating_mul(1000));
            out(format!(
                "uptime      {} (since {})",
                human::uptime(s.uptime_secs),
                human::date(started)
            ));
            for c in s.clocks.iter().filter(|c| c.skewed) {
                out(format!(
                    "clock skew  peer {} is {} {} (its writes {} last-writer-wins conflicts)",
                    c.peer_id,
                    duration(c.skew_ms.unsigned_abs()),
                    if c.skew_ms > 0 { "ahead" } else { "behind" },
                    if c.skew_ms > 0 { "win" } else { "lose" },
                ));
            }
            match s.own_clock.as_str() {
                "ahead" | "behind" => out(format!(
                    "own clock   looks wrong: {} {} of most peers",
                    duration(s.own_clock_off_ms),
                    s.own_clock
                )),
                other => out(format!("own clock   {other}")),
            }
            for line in s.primary.iter().flat_map(|p| p.human_lines()) {
                out(line);
            }
            for line in s.storage.human_lines() {
                out(line);
            }
            Ok(())
        }
        other => unexpected(&other),
    }
}

/// `7_200_000` -> `"2h 0m 0s"`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{:03}s", s, ms % 1000),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m {}s", s / 3600, (s / 60) % 60, s % 60),
    }
}

fn json(v: &impl serde::Serialize) -> Result<()> {
    out(serde_json::to_string_pretty(v)?);
    Ok(())
}

fn unexpected(r: &Response) -> Result<()> {
    bail!("the node answered something unexpected: {r:?}; is the CLI the same version as the node?")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
        () = term => {}
    }
}
