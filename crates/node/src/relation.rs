//! `ecomesh relation` and `ecomesh cap`: relationships (who is family,
//! neighbour, municipal, bioregional) and capabilities (non-public
//! collections, tokens granted, installed and revoked), through the control
//! socket. The node side ([`relation_rows`], [`set_relation`], [`cap_list`],
//! ...) is shared with the HTTP API (`api/relations.rs`), so both answer
//! the same rows.

use std::time::Duration;

use anyhow::{Result, bail};
use ecomesh_sync::{
    Action, Capability, Node, Reach, SyncError, Trust, parse_peer_id, parse_token_id, parse_trust,
    token_id_text,
};
use serde::{Deserialize, Serialize};

use crate::control::{self, Request, Response};
use crate::paths::DataDir;

/// Longest lifetime a granted capability may have: ten years.
pub const MAX_CAP_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Lifetime of a granted capability when none is given: 30 days.
pub const DEFAULT_CAP_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// Longest token text accepted, in characters (a token is at most
/// `ecomesh_identity::capability::MAX_TOKEN_LEN` bytes, in Base58).
pub const MAX_TOKEN_TEXT: usize = 2 * ecomesh_identity::capability::MAX_TOKEN_LEN;

/// `ecomesh relation` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RelationCommand {
    /// Set how this node relates to PEER: family, neighbour, municipal,
    /// bioregional or stranger. Reach decides with it what PEER is sent and
    /// served; it is kept across restarts and wins over ecomesh.toml.
    Set {
        /// The peer id (as `ecomesh peers` prints it).
        peer: String,
        /// family, neighbour, municipal, bioregional or stranger.
        level: String,
    },
    /// Remove the relationship set with PEER (it falls back to ecomesh.toml,
    /// else stranger).
    Remove {
        /// The peer id.
        peer: String,
    },
    /// List the peers this node has a relationship with.
    List,
}

/// `ecomesh cap` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CapCommand {
    /// Make COLLECTION non-public on this node: only peers holding a token
    /// this node granted are served it (read) or have versions of it taken in (write).
    Restrict {
        /// The collection.
        collection: String,
    },
    /// Grant PEER read and/or write on COLLECTION; prints the token, which
    /// other replicas of the collection install with `ecomesh cap install`.
    Grant {
        /// The collection.
        collection: String,
        /// The peer id the token admits.
        peer: String,
        /// Grant read (being served the collection).
        #[arg(long)]
        read: bool,
        /// Grant write (versions of it taken in from the peer).
        #[arg(long)]
        write: bool,
        /// How long the token is valid: `90s`, `30m`, `12h`, `7d` or seconds.
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
        expires: Duration,
    },
    /// Install a token granted elsewhere (its signature is checked).
    Install {
        /// The token text `ecomesh cap grant` printed.
        token: String,
    },
    /// Revoke a token by id: it admits no one on this node from now on.
    Revoke {
        /// The token id (32 hex digits, from `ecomesh cap list`).
        token_id: String,
    },
    /// List the restricted collections, the tokens held and the refusals
    /// since the last list.
    List,
}

/// One relationship, as `relation list` and `GET /api/v1/relations` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationRow {
    /// The peer id.
    pub peer_id: String,
    /// `own-device`, `family`, `neighbour`, `municipal`, `bioregional` or `stranger`.
    pub level: String,
    /// Where it comes from: `link`, `runtime` or `config`.
    pub source: String,
    /// Whether the peer is reachable now.
    pub reachable: bool,
}

/// A restricted collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestrictedRow {
    /// The collection.
    pub collection: String,
    /// The peer whose tokens count for it.
    pub issuer: String,
}

/// A capability token held by the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapRow {
    /// Its id, 32 hex digits (what `cap revoke` takes).
    pub token_id: String,
    /// The collection it grants.
    pub collection: String,
    /// The peer it admits.
    pub peer_id: String,
    /// The peer that issued (signed) it.
    pub issuer: String,
    /// `read`, `write`, `delete`.
    pub actions: Vec<String>,
    /// Valid from, Unix ms.
    pub not_before_ms: u64,
    /// Valid until (excluded), Unix ms.
    pub expires_at_ms: u64,
    /// The token itself, Base58 (what `cap install` takes).
    pub token: String,
}

/// A request or push refused for want of a capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalRow {
    /// The peer refused.
    pub peer_id: String,
    /// The collection.
    pub collection: String,
    /// `read` or `write`.
    pub action: String,
}

/// What `cap list` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapList {
    /// The restricted collections.
    pub restricted: Vec<RestrictedRow>,
    /// The tokens held.
    pub tokens: Vec<CapRow>,
    /// The refusals since the last list (each is also a `capability_refused`
    /// sync event as it happens).
    pub refusals: Vec<RefusalRow>,
}

/// A duration: a number with `s`, `m`, `h` or `d`, or plain seconds; at
/// least one second, at most [`MAX_CAP_LIFETIME`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 30m, 12h or 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    let d = Duration::from_secs(n.saturating_mul(unit_secs));
    if d.is_zero() || d > MAX_CAP_LIFETIME {
        return Err(format!("{text:?}: a lifetime is 1 s to 10 years"));
    }
    Ok(d)
}

/// A `--relation PEER=LEVEL` value (LEVEL: family, neighbour, municipal,
/// bioregional or stranger).
pub fn parse_relation_flag(text: &str) -> Result<(ecomesh_sync::PeerId, Trust), String> {
    let (peer, level) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected PEER=LEVEL, e.g. 8P17...=family"))?;
    let peer = parse_peer_id(peer).map_err(|e| e.to_string())?;
    match parse_trust(level).map_err(|e| e.to_string())? {
        Trust::OwnDevice => Err("own devices come from device links, not --relation".into()),
        t => Ok((peer, t)),
    }
}

/// A `--reach COLLECTION=LEVEL` value (LEVEL: private, local,
/// neighbourhood, municipal, bioregional or commons).
pub fn parse_reach_flag(text: &str) -> Result<(String, Reach), String> {
    let (collection, level) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?}: expected COLLECTION=LEVEL, e.g. photos=local"))?;
    if collection.is_empty() {
        return Err(format!("{text:?}: the collection is empty"));
    }
    let reach = match level.trim().to_ascii_lowercase().as_str() {
        "private" => Reach::Private,
        "local" => Reach::Local,
        "neighbourhood" | "neighborhood" => Reach::Neighbourhood,
        "municipal" => Reach::Municipal,
        "bioregional" => Reach::Bioregional,
        "commons" => Reach::Commons,
        _ => {
            return Err(format!(
                "{level:?} is not a reach; reaches are private, local, neighbourhood, \
                 municipal, bioregional and commons"
            ));
        }
    };
    Ok((collection.to_owned(), reach))
}

/// Every relationship of the node, by peer id.
pub fn relation_rows(node: &Node) -> Vec<RelationRow> {
    let reachable: Vec<_> = node.peers().into_iter().map(|p| p.peer_id).collect();
    node.relationships()
        .into_iter()
        .map(|r| RelationRow {
            peer_id: r.peer.to_string(),
            level: r.trust.name().to_owned(),
            source: r.source.name().to_owned(),
            reachable: reachable.contains(&r.peer),
        })
        .collect()
}

/// Sets the relationship with `peer` to `level`; answers the row.
pub fn set_relation(node: &Node, peer: &str, level: &str) -> Result<RelationRow, SyncError> {
    let peer = parse_peer_id(peer)?;
    let trust = parse_trust(level)?;
    node.set_relationship(peer, trust)?;
    Ok(row_of(node, peer))
}

/// Removes the runtime relationship with `peer`; answers whether there was
/// one and the row as it is now (its level falls back to the configuration).
pub fn remove_relation(node: &Node, peer: &str) -> Result<(bool, RelationRow), SyncError> {
    let peer = parse_peer_id(peer)?;
    let removed = node.remove_relationship(&peer)?;
    Ok((removed, row_of(node, peer)))
}

fn row_of(node: &Node, peer: ecomesh_sync::PeerId) -> RelationRow {
    relation_rows(node)
        .into_iter()
        .find(|r| r.peer_id == peer.to_string())
        .unwrap_or_else(|| RelationRow {
            peer_id: peer.to_string(),
            level: node.relationship(&peer).name().to_owned(),
            source: "none".to_owned(),
            reachable: node.peers().iter().any(|p| p.peer_id == peer),
        })
}

fn cap_row(t: &Capability) -> CapRow {
    CapRow {
        token_id: token_id_text(t.token_id()),
        collection: t.resource().to_owned(),
        peer_id: t.audience().to_string(),
        issuer: t.issuer().peer_id().to_string(),
        actions: [Action::Read, Action::Write, Action::Delete]
            .into_iter()
            .filter(|a| t.actions().contains(*a))
            .map(|a| a.as_str().to_owned())
            .collect(),
        not_before_ms: t.not_before_ms(),
        expires_at_ms: t.expires_at_ms(),
        token: ecomesh_types::base58::encode(&t.to_bytes()),
    }
}

/// The restricted collections, tokens and refusals since the last call.
pub fn cap_list(node: &Node) -> CapList {
    CapList {
        restricted: node
            .restricted_collections()
            .into_iter()
            .map(|(collection, issuer)| RestrictedRow {
                collection,
                issuer: issuer.to_string(),
            })
            .collect(),
        tokens: node.capabilities().iter().map(cap_row).collect(),
        refusals: node
            .capability_refusals()
            .into_iter()
            .map(|r| RefusalRow {
                peer_id: r.peer.to_string(),
                collection: r.collection,
                action: r.action.to_owned(),
            })
            .collect(),
    }
}

/// Restricts `collection` on the node; answers the list.
pub fn restrict(node: &Node, collection: &str) -> Result<CapList, SyncError> {
    node.restrict_collection(collection)?;
    Ok(cap_list(node))
}

/// Grants `peer` the actions on `collection` for `valid_for`.
pub fn grant(
    node: &Node,
    collection: &str,
    peer: &str,
    read: bool,
    write: bool,
    valid_for: Duration,
) -> Result<CapRow, SyncError> {
    let peer = parse_peer_id(peer)?;
    let actions: Vec<Action> = [(read, Action::Read), (write, Action::Write)]
        .into_iter()
        .filter_map(|(yes, a)| yes.then_some(a))
        .collect();
    if actions.is_empty() {
        return Err(SyncError::InvalidArgument(
            "grant read, write or both (--read, --write)".into(),
        ));
    }
    if valid_for.is_zero() || valid_for > MAX_CAP_LIFETIME {
        return Err(SyncError::InvalidArgument(
            "a capability's lifetime is 1 s to 10 years".into(),
        ));
    }
    node.grant_capability(collection, peer, &actions, valid_for)
        .map(|t| cap_row(&t))
}

/// Installs the token of `text` (Base58, as `grant` prints it).
pub fn install(node: &Node, text: &str) -> Result<CapRow, SyncError> {
    let text = text.trim();
    if text.len() > MAX_TOKEN_TEXT {
        return Err(SyncError::InvalidArgument(format!(
            "a token is at most {MAX_TOKEN_TEXT} characters"
        )));
    }
    let bytes = ecomesh_types::base58::decode(text, ecomesh_identity::capability::MAX_TOKEN_LEN)
        .map_err(|e| SyncError::InvalidArgument(format!("not a token (Base58): {e}")))?;
    node.install_capability(&bytes).map(|t| cap_row(&t))
}

/// Revokes the token whose id is the 32 hex digits of `id`.
pub fn revoke(node: &Node, id: &str) -> Result<CapList, SyncError> {
    node.revoke_capability(parse_token_id(id)?)?;
    Ok(cap_list(node))
}

/// Answers a relation or capability control request (`None`: not one).
pub(crate) fn serve(node: &Node, req: &Request) -> Option<Result<Response, SyncError>> {
    Some(match req {
        Request::RelationList => Ok(Response::Relations {
            relations: relation_rows(node),
        }),
        Request::RelationSet { peer, level } => {
            set_relation(node, peer, level).map(|r| Response::Relation {
                relation: r,
                removed: None,
            })
        }
        Request::RelationRemove { peer } => {
            remove_relation(node, peer).map(|(removed, r)| Response::Relation {
                relation: r,
                removed: Some(removed),
            })
        }
        Request::CapList => Ok(Response::Capabilities(cap_list(node))),
        Request::CapRestrict { collection } => {
            restrict(node, collection).map(Response::Capabilities)
        }
        Request::CapGrant {
            collection,
            peer,
            read,
            write,
            expires_secs,
        } => grant(
            node,
            collection,
            peer,
            *read,
            *write,
            Duration::from_secs(*expires_secs),
        )
        .map(Response::Capability),
        Request::CapInstall { token } => install(node, token).map(Response::Capability),
        Request::CapRevoke { token_id } => revoke(node, token_id).map(Response::Capabilities),
        _ => return None,
    })
}

fn print(answer: &Response, json_out: bool) -> Result<()> {
    if json_out {
        crate::output::line(serde_json::to_string_pretty(answer)?);
        return Ok(());
    }
    match answer {
        Response::Relations { relations } => {
            if relations.is_empty() {
                crate::output::line("no relationships (every peer is a stranger)");
            }
            for r in relations {
                crate::output::line(relation_line(r));
            }
        }
        Response::Relation { relation, removed } => {
            if *removed == Some(false) {
                crate::output::line(format!("no relationship was set with {}", relation.peer_id));
            }
            crate::output::line(relation_line(relation));
        }
        Response::Capability(c) => {
            crate::output::line(token_line(c));
            crate::output::line(&c.token);
        }
        Response::Capabilities(list) => {
            for r in &list.restricted {
                crate::output::line(format!(
                    "restricted {} (tokens of {})",
                    r.collection, r.issuer
                ));
            }
            for c in &list.tokens {
                crate::output::line(token_line(c));
            }
            for r in &list.refusals {
                crate::output::line(format!(
                    "refused {} {} on {}",
                    r.peer_id, r.action, r.collection
                ));
            }
            if list.restricted.is_empty() && list.tokens.is_empty() {
                crate::output::line("no restricted collection and no token");
            }
        }
        other => bail!("the node answered something unexpected: {other:?}"),
    }
    Ok(())
}

fn token_line(c: &CapRow) -> String {
    format!(
        "token {} grants {} {} on {} until {}",
        c.token_id,
        c.peer_id,
        c.actions.join("+"),
        c.collection,
        crate::human::date(c.expires_at_ms)
    )
}

fn relation_line(r: &RelationRow) -> String {
    let state = if r.reachable { "reachable" } else { "away" };
    format!("{}  {}  ({}, {state})", r.peer_id, r.level, r.source)
}

/// `ecomesh relation ...` on the CLI side.
pub fn relation_command(data: &DataDir, cmd: RelationCommand, json_out: bool) -> Result<()> {
    let socket = data.checked_socket()?;
    let req = match cmd {
        RelationCommand::Set { peer, level } => {
            parse_peer_id(&peer)?;
            if parse_trust(&level)? == Trust::OwnDevice {
                bail!("own devices come from device links: ecomesh link new / accept");
            }
            Request::RelationSet { peer, level }
        }
        RelationCommand::Remove { peer } => {
            parse_peer_id(&peer)?;
            Request::RelationRemove { peer }
        }
        RelationCommand::List => Request::RelationList,
    };
    print(&control::call(&socket, &req)?, json_out)
}

/// `ecomesh cap ...` on the CLI side.
pub fn cap_command(data: &DataDir, cmd: CapCommand, json_out: bool) -> Result<()> {
    let socket = data.checked_socket()?;
    let req = match cmd {
        CapCommand::Restrict { collection } => Request::CapRestrict { collection },
        CapCommand::Grant {
            collection,
            peer,
            read,
            write,
            expires,
        } => {
            parse_peer_id(&peer)?;
            if !read && !write {
                bail!("grant --read, --write or both");
            }
            Request::CapGrant {
                collection,
                peer,
                read,
                write,
                expires_secs: expires.as_secs(),
            }
        }
        CapCommand::Install { token } => Request::CapInstall { token },
        CapCommand::Revoke { token_id } => Request::CapRevoke { token_id },
        CapCommand::List => Request::CapList,
    };
    print(&control::call(&socket, &req)?, json_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        for bad in ["", "0s", "s", "3w", "-1d", "99999999999999999999d", "4000d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relation_and_reach_flags_parse_and_refuse_what_they_cannot_be() {
        let p = "8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm";
        assert_eq!(
            parse_relation_flag(&format!("{p}=neighbor")).unwrap().1,
            Trust::Neighbour
        );
        assert!(parse_relation_flag(&format!("{p}=own-device")).is_err());
        assert!(parse_relation_flag("nobody=family").is_err());
        assert!(parse_relation_flag(p).is_err());
        assert_eq!(
            parse_reach_flag("a=b=local").unwrap(),
            ("a=b".to_owned(), Reach::Local)
        );
        assert!(parse_reach_flag("=local").is_err());
        assert!(parse_reach_flag("photos=invited").is_err());
    }
}
