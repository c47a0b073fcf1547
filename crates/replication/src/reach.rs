//! Reach (seed 001, "Reach-Based Distribution"): who may receive a collection
//! or a document at all.
//!
//! Reach is a gate, checked before any replication, anti-entropy answer or blob
//! push: a peer outside the reach of some data never gets its bytes. It is
//! separate from partner selection ([`crate::policy`]), which chooses among the
//! peers reach admits.
//!
//! The levels, narrowest first:
//!
//! | reach | admits |
//! |---|---|
//! | [`Reach::Private`] | only this user's own devices |
//! | [`Reach::Invited`] | own devices and the named peers |
//! | [`Reach::Local`] | own devices and the family cluster |
//! | [`Reach::Neighbourhood`] | ... and the extended trust network |
//! | [`Reach::Municipal`] | ... and the community |
//! | [`Reach::Bioregional`] | ... and the region |
//! | [`Reach::Commons`] | anyone willing to store |
//!
//! How this node relates to a peer ([`Trust`]) is the caller's knowledge (device
//! links, cluster membership, the trust graph); this module only decides.

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_types::PeerId;

use crate::ReplicationError;

/// How close a peer is to this node's user, narrowest first. The order is the
/// nesting of trust circles: every circle contains the narrower ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trust {
    /// One of this user's own devices (signed device link, seed 4.2).
    OwnDevice,
    /// A node of the family cluster.
    Family,
    /// A trust-connected peer of the extended network.
    Neighbour,
    /// A peer of the same community.
    Municipal,
    /// A peer of the same region.
    Bioregional,
    /// No known relation.
    Stranger,
}

impl Trust {
    /// Every circle, narrowest first.
    pub const ALL: [Trust; 6] = [
        Trust::OwnDevice,
        Trust::Family,
        Trust::Neighbour,
        Trust::Municipal,
        Trust::Bioregional,
        Trust::Stranger,
    ];

    /// The circle's name: `own-device`, `family`, `neighbour`, `municipal`,
    /// `bioregional` or `stranger`.
    pub const fn name(self) -> &'static str {
        match self {
            Trust::OwnDevice => "own-device",
            Trust::Family => "family",
            Trust::Neighbour => "neighbour",
            Trust::Municipal => "municipal",
            Trust::Bioregional => "bioregional",
            Trust::Stranger => "stranger",
        }
    }

    /// The circle named `name` (as [`Trust::name`] gives it; `neighbor` and
    /// `own_device` are accepted too, case-insensitively), or `None`.
    pub fn from_name(name: &str) -> Option<Trust> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        let n = if n == "neighbor" {
            "neighbour".to_owned()
        } else {
            n
        };
        Trust::ALL.into_iter().find(|t| t.name() == n)
    }
}

/// A peer together with how this node relates to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Relation {
    /// The peer.
    pub peer: PeerId,
    /// Its trust circle.
    pub trust: Trust,
}

impl Relation {
    /// A relation.
    pub const fn new(peer: PeerId, trust: Trust) -> Self {
        Relation { peer, trust }
    }
}

/// Who may receive some data (seed 001).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Only my own devices; never replicates to others.
    Private,
    /// My own devices and exactly these named peers.
    Invited(BTreeSet<PeerId>),
    /// My own devices and the family cluster.
    Local,
    /// Up to the extended trust network.
    Neighbourhood,
    /// Up to the community.
    Municipal,
    /// Up to the region.
    Bioregional,
    /// Anyone.
    Commons,
}

impl Reach {
    /// The widest trust circle the level admits (invited peers aside).
    fn widest(&self) -> Trust {
        match self {
            Reach::Private | Reach::Invited(_) => Trust::OwnDevice,
            Reach::Local => Trust::Family,
            Reach::Neighbourhood => Trust::Neighbour,
            Reach::Municipal => Trust::Municipal,
            Reach::Bioregional => Trust::Bioregional,
            Reach::Commons => Trust::Stranger,
        }
    }

    /// True when the peer of `relation` may receive data of this reach: its
    /// trust circle is within the level's circle, or (for [`Reach::Invited`])
    /// it is one of the named peers. Own devices are admitted at every level.
    pub fn admits(&self, relation: &Relation) -> bool {
        if relation.trust <= self.widest() {
            return true;
        }
        match self {
            Reach::Invited(peers) => peers.contains(&relation.peer),
            _ => false,
        }
    }

    /// The seed's name of the level (`private`, `invited`, `local`,
    /// `neighbourhood`, `municipal`, `bioregional`, `commons`).
    pub fn name(&self) -> &'static str {
        match self {
            Reach::Private => "private",
            Reach::Invited(_) => "invited",
            Reach::Local => "local",
            Reach::Neighbourhood => "neighbourhood",
            Reach::Municipal => "municipal",
            Reach::Bioregional => "bioregional",
            Reach::Commons => "commons",
        }
    }
}

/// The reach of every collection and document: a per-document entry wins over
/// a per-collection entry, which wins over the default.
///
/// `Default` is [`Reach::Commons`] for everything, which is the seed's model
/// (seed 000 replicates to any reputable peer; seed 001's MVP is commons-level);
/// restrict collections with [`Self::set_collection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReachPolicy {
    default: Reach,
    collections: BTreeMap<String, Reach>,
    documents: BTreeMap<(String, String), Reach>,
}

impl Default for ReachPolicy {
    fn default() -> Self {
        ReachPolicy::new(Reach::Commons)
    }
}

impl ReachPolicy {
    /// A policy giving every collection and document `default`.
    pub fn new(default: Reach) -> Self {
        ReachPolicy {
            default,
            collections: BTreeMap::new(),
            documents: BTreeMap::new(),
        }
    }

    /// Sets the reach of every document of `collection` without its own entry.
    pub fn set_collection(&mut self, collection: &str, reach: Reach) {
        self.collections.insert(collection.to_owned(), reach);
    }

    /// Sets the reach of one document.
    pub fn set_document(&mut self, collection: &str, id: &str, reach: Reach) {
        self.documents
            .insert((collection.to_owned(), id.to_owned()), reach);
    }

    /// Removes a document's own entry; returns whether it had one.
    pub fn clear_document(&mut self, collection: &str, id: &str) -> bool {
        self.documents
            .remove(&(collection.to_owned(), id.to_owned()))
            .is_some()
    }

    /// The reach of document `id` of `collection` (`None`: the collection as a
    /// whole, ignoring document entries).
    pub fn reach_of(&self, collection: &str, id: Option<&str>) -> &Reach {
        if let Some(id) = id
            && let Some(r) = self.documents.get(&(collection.to_owned(), id.to_owned()))
        {
            return r;
        }
        self.collections.get(collection).unwrap_or(&self.default)
    }

    /// True when the peer of `relation` may receive the data.
    pub fn admits(&self, collection: &str, id: Option<&str>, relation: &Relation) -> bool {
        self.reach_of(collection, id).admits(relation)
    }

    /// The peers among `recipients` that may receive the data, in their order.
    pub fn filter<I>(&self, collection: &str, id: Option<&str>, recipients: I) -> Vec<PeerId>
    where
        I: IntoIterator<Item = Relation>,
    {
        let reach = self.reach_of(collection, id);
        recipients
            .into_iter()
            .filter(|r| reach.admits(r))
            .map(|r| r.peer)
            .collect()
    }

    /// The check a sender makes right before sending bytes of the data to a
    /// peer: `Ok` if reach admits it, else [`ReplicationError::OutOfReach`]
    /// naming the peer and the data (`collection` or `collection/id`).
    pub fn ensure_admitted(
        &self,
        collection: &str,
        id: Option<&str>,
        relation: &Relation,
    ) -> Result<(), ReplicationError> {
        if self.admits(collection, id, relation) {
            return Ok(());
        }
        tracing::debug!(peer = %relation.peer, collection, ?id, "refused: outside reach");
        Err(ReplicationError::OutOfReach {
            peer: relation.peer,
            what: match id {
                Some(id) => format!("{collection}/{id}"),
                None => collection.to_owned(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_TRUST: [Trust; 6] = Trust::ALL;

    fn peer(n: u8) -> PeerId {
        PeerId::from_digest([n; 32])
    }

    /// The trust circles `reach` admits for a peer that is not invited.
    fn admitted(reach: &Reach) -> Vec<Trust> {
        ALL_TRUST
            .into_iter()
            .filter(|t| reach.admits(&Relation::new(peer(99), *t)))
            .collect()
    }

    #[test]
    fn private_admits_only_own_devices() {
        assert_eq!(admitted(&Reach::Private), vec![Trust::OwnDevice]);
    }

    #[test]
    fn invited_admits_own_devices_and_named_peers_only() {
        let reach = Reach::Invited([peer(1), peer(2)].into());
        assert_eq!(admitted(&reach), vec![Trust::OwnDevice]);
        for t in ALL_TRUST {
            assert!(reach.admits(&Relation::new(peer(1), t)));
            assert!(reach.admits(&Relation::new(peer(2), t)));
        }
        assert!(!reach.admits(&Relation::new(peer(3), Trust::Family)));
    }

    #[test]
    fn local_admits_the_family_cluster() {
        assert_eq!(
            admitted(&Reach::Local),
            vec![Trust::OwnDevice, Trust::Family]
        );
    }

    #[test]
    fn wider_levels_nest() {
        assert_eq!(admitted(&Reach::Neighbourhood), ALL_TRUST[..3].to_vec());
        assert_eq!(admitted(&Reach::Municipal), ALL_TRUST[..4].to_vec());
        assert_eq!(admitted(&Reach::Bioregional), ALL_TRUST[..5].to_vec());
    }

    #[test]
    fn commons_admits_everyone() {
        assert_eq!(admitted(&Reach::Commons), ALL_TRUST.to_vec());
    }

    #[test]
    fn document_entry_beats_collection_beats_default() {
        let mut p = ReachPolicy::new(Reach::Local);
        p.set_collection("posts", Reach::Commons);
        p.set_document("posts", "draft", Reach::Private);
        assert_eq!(p.reach_of("other", Some("x")), &Reach::Local);
        assert_eq!(p.reach_of("posts", Some("x")), &Reach::Commons);
        assert_eq!(p.reach_of("posts", Some("draft")), &Reach::Private);
        assert_eq!(p.reach_of("posts", None), &Reach::Commons);
        assert!(p.clear_document("posts", "draft"));
        assert!(!p.clear_document("posts", "draft"));
        assert_eq!(p.reach_of("posts", Some("draft")), &Reach::Commons);
        assert_eq!(
            ReachPolicy::default().reach_of("any", None),
            &Reach::Commons
        );
    }

    #[test]
    fn filter_keeps_only_admitted_recipients_in_order() {
        let mut p = ReachPolicy::new(Reach::Commons);
        p.set_collection("family", Reach::Local);
        let recipients = [
            Relation::new(peer(1), Trust::Stranger),
            Relation::new(peer(2), Trust::Family),
            Relation::new(peer(3), Trust::Neighbour),
            Relation::new(peer(4), Trust::OwnDevice),
        ];
        assert_eq!(p.filter("family", None, recipients), vec![peer(2), peer(4)]);
        assert_eq!(p.filter("open", None, recipients).len(), 4);
    }

    #[test]
    fn ensure_admitted_refuses_with_a_typed_error() {
        let mut p = ReachPolicy::new(Reach::Commons);
        p.set_document("notes", "n1", Reach::Private);
        let stranger = Relation::new(peer(5), Trust::Stranger);
        assert!(p.ensure_admitted("notes", Some("n2"), &stranger).is_ok());
        match p.ensure_admitted("notes", Some("n1"), &stranger) {
            Err(ReplicationError::OutOfReach { peer: who, what }) => {
                assert_eq!(who, peer(5));
                assert_eq!(what, "notes/n1");
            }
            other => panic!("expected OutOfReach, got {other:?}"),
        }
        let own = Relation::new(peer(6), Trust::OwnDevice);
        assert!(p.ensure_admitted("notes", Some("n1"), &own).is_ok());
    }

    #[test]
    fn trust_names_round_trip() {
        for t in Trust::ALL {
            assert_eq!(Trust::from_name(t.name()), Some(t));
        }
        assert_eq!(Trust::from_name(" Neighbor "), Some(Trust::Neighbour));
        assert_eq!(Trust::from_name("own_device"), Some(Trust::OwnDevice));
        assert_eq!(Trust::from_name("friend"), None);
    }

    #[test]
    fn names() {
        assert_eq!(Reach::Invited(BTreeSet::new()).name(), "invited");
        assert_eq!(Reach::Neighbourhood.name(), "neighbourhood");
    }
}
