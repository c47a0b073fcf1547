//! Replication policy (seed 5.2): how many copies of each collection exist, which
//! peers hold them, what is pinned, and what may be garbage-collected.
//!
//! Everything here is a pure function of the data passed in: no clock reads, no
//! I/O. Time is Unix milliseconds given by the caller.
//!
//! # Partner selection
//!
//! [`select_partners`] applies the seed's four rules:
//!
//! 1. **Proximity**: candidates are ranked by their nearest transport,
//!    [`proximity_rank`]: wired LAN, then Wi-Fi Direct, then Bluetooth (the
//!    local transports), then the internet, then LoRa last (a few hundred bytes
//!    per second is a poor carrier for replicas; it is kept as a last resort).
//!    Within a rank, higher reputation first, then peer id byte order, so the
//!    choice is deterministic.
//! 2. **Diversity**: each candidate may name the physical network it sits on
//!    ([`Candidate::network`]). If none of the nearest `factor` candidates is on
//!    another physical network than the origin but some eligible candidate is,
//!    the best such candidate replaces the last chosen one. A candidate with no
//!    known network never counts as diverse (diversity must be provable).
//! 3. **Reputation**: peers below [`MIN_REPUTATION`] (0.5), or with a score that
//!    is not a number, are never chosen.
//! 4. **Pins**: a user pin restricts the scope's replicas to the named devices;
//!    a network-region pin restricts them to candidates whose region tag matches.
//!
//! Reach (who may receive the bytes at all) is decided by [`crate::reach`];
//! [`ReplicationManager::partners_for`] filters candidates through it before
//! selecting.

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_types::{ContentId, PeerId, PeerInfo, TransportType, Value};

use crate::ReplicationError;
use crate::queue::SyncItem;
use crate::reach::{ReachPolicy, Relation, Trust};

/// The lowest reputation a replication partner may have (seed 5.2, rule 3).
pub const MIN_REPUTATION: f64 = 0.5;

/// The largest replication factor a configuration accepts. A factor above it is
/// far beyond any mesh this targets and almost certainly a mistake.
pub const MAX_FACTOR: u32 = 64;

/// The default garbage-collection TTL: 30 days in milliseconds (seed 5.2).
pub const DEFAULT_GC_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// The factor of a collection that has no entry and no configured default.
pub const DEFAULT_FACTOR: u32 = 3;

/// The seed's default factors per collection (seed 5.2 table).
pub const SEED_FACTORS: [(&str, u32); 5] = [
    ("users", 3),
    ("permissions", 5),
    ("transactions", 3),
    ("groups", 3),
    ("notifications", 2),
];

/// Longest collection name a configuration or pin accepts, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

fn check_factor(factor: u32) -> Result<u32, ReplicationError> {
    if factor == 0 || factor > MAX_FACTOR {
        return Err(ReplicationError::InvalidConfig(format!(
            "replication factor {factor} is outside 1..={MAX_FACTOR}"
        )));
    }
    Ok(factor)
}

fn check_name(what: &str, name: &str) -> Result<(), ReplicationError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ReplicationError::InvalidConfig(format!(
            "{what} name must be 1..={MAX_NAME_LEN} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

/// Replication factors per collection and the GC TTL.
///
/// Every factor it holds is in `1..=`[`MAX_FACTOR`]; the setters refuse other
/// values with [`ReplicationError::InvalidConfig`], so [`Self::factor_for`]
/// always returns a usable factor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    factors: BTreeMap<String, u32>,
    default_factor: u32,
    gc_ttl_ms: u64,
}

impl Default for ReplicationConfig {
    /// The seed's defaults: [`SEED_FACTORS`], other collections
    /// [`DEFAULT_FACTOR`], GC TTL [`DEFAULT_GC_TTL_MS`].
    fn default() -> Self {
        ReplicationConfig {
            factors: SEED_FACTORS
                .iter()
                .map(|(name, f)| ((*name).to_owned(), *f))
                .collect(),
            default_factor: DEFAULT_FACTOR,
            gc_ttl_ms: DEFAULT_GC_TTL_MS,
        }
    }
}

impl ReplicationConfig {
    /// The seed's defaults (same as `Default`).
    pub fn seed_defaults() -> Self {
        Self::default()
    }

    /// Sets the factor of `collection`; a factor outside `1..=MAX_FACTOR` or an
    /// empty / overlong name is refused and leaves the configuration unchanged.
    pub fn set_factor(&mut self, collection: &str, factor: u32) -> Result<(), ReplicationError> {
        check_name("collection", collection)?;
        let factor = check_factor(factor)?;
        self.factors.insert(collection.to_owned(), factor);
        Ok(())
    }

    /// Builder form of [`Self::set_factor`].
    pub fn with_factor(mut self, collection: &str, factor: u32) -> Result<Self, ReplicationError> {
        self.set_factor(collection, factor)?;
        Ok(self)
    }

    /// Sets the factor of every collection without its own entry (app-specific
    /// collections); refused like [`Self::set_factor`].
    pub fn set_default_factor(&mut self, factor: u32) -> Result<(), ReplicationError> {
        self.default_factor = check_factor(factor)?;
        Ok(())
    }

    /// Sets the GC TTL; zero is refused (it would make fresh data collectable).
    pub fn set_gc_ttl_ms(&mut self, ttl_ms: u64) -> Result<(), ReplicationError> {
        if ttl_ms == 0 {
            return Err(ReplicationError::InvalidConfig(
                "GC TTL must be above zero".into(),
            ));
        }
        self.gc_ttl_ms = ttl_ms;
        Ok(())
    }

    /// The replication factor of `collection`: its own entry, else the default.
    /// Always in `1..=MAX_FACTOR`.
    pub fn factor_for(&self, collection: &str) -> u32 {
        self.factors
            .get(collection)
            .copied()
            .unwrap_or(self.default_factor)
    }

    /// The factor of collections without an entry.
    pub fn default_factor(&self) -> u32 {
        self.default_factor
    }

    /// The GC TTL in milliseconds.
    pub fn gc_ttl_ms(&self) -> u64 {
        self.gc_ttl_ms
    }
}

/// What a pin applies to: a whole collection or one document of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// The collection.
    pub collection: String,
    /// One document, or `None` for every document of the collection.
    pub id: Option<String>,
}

impl Scope {
    /// Every document of `collection`.
    pub fn collection(collection: &str) -> Self {
        Scope {
            collection: collection.to_owned(),
            id: None,
        }
    }

    /// One document.
    pub fn document(collection: &str, id: &str) -> Self {
        Scope {
            collection: collection.to_owned(),
            id: Some(id.to_owned()),
        }
    }

    /// True when this scope covers document `id` of `collection`.
    pub fn covers(&self, collection: &str, id: Option<&str>) -> bool {
        self.collection == collection
            && match (&self.id, id) {
                (None, _) => true,
                (Some(mine), Some(theirs)) => mine == theirs,
                (Some(_), None) => false,
            }
    }
}

/// The three kinds of pin of seed 5.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PinKind {
    /// "I want this data on these devices": kept there regardless of the
    /// factor, and replicated only to them.
    User,
    /// "This app needs this collection locally": kept on this device.
    App,
    /// "This data must stay within this region": replicated only to peers
    /// with a matching region tag.
    NetworkRegion,
}

/// One pin.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pin {
    /// Keep `scope` on exactly these devices (never an empty set).
    User {
        /// What is pinned.
        scope: Scope,
        /// The devices that keep it; replicas go only to them.
        devices: BTreeSet<PeerId>,
    },
    /// An app on this device needs `scope` locally.
    App {
        /// What is pinned.
        scope: Scope,
        /// The app's name.
        app: String,
    },
    /// `scope` stays within `region`.
    NetworkRegion {
        /// What is pinned.
        scope: Scope,
        /// The region tag peers must carry.
        region: String,
    },
}

impl Pin {
    /// The pin's kind.
    pub fn kind(&self) -> PinKind {
        match self {
            Pin::User { .. } => PinKind::User,
            Pin::App { .. } => PinKind::App,
            Pin::NetworkRegion { .. } => PinKind::NetworkRegion,
        }
    }

    /// What the pin applies to.
    pub fn scope(&self) -> &Scope {
        match self {
            Pin::User { scope, .. } | Pin::App { scope, .. } | Pin::NetworkRegion { scope, .. } => {
                scope
            }
        }
    }

    fn validate(&self) -> Result<(), ReplicationError> {
        let scope = self.scope();
        check_name("collection", &scope.collection)?;
        if let Some(id) = &scope.id {
            check_name("document", id)?;
        }
        match self {
            Pin::User { devices, .. } if devices.is_empty() => Err(
                ReplicationError::InvalidConfig("a user pin names at least one device".into()),
            ),
            Pin::App { app, .. } => check_name("app", app),
            Pin::NetworkRegion { region, .. } => check_name("region", region),
            Pin::User { .. } => Ok(()),
        }
    }
}

/// The placement constraints that pins put on one document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// `Some(devices)` when user pins restrict replicas to these devices (the
    /// union over every user pin covering the document).
    pub devices: Option<BTreeSet<PeerId>>,
    /// `Some(regions)` when region pins restrict replicas to peers tagged with
    /// one of these regions (the union over every region pin covering it).
    pub regions: Option<BTreeSet<String>>,
}

/// A set of pins with add / remove / lookup.
///
/// Promises: every pin in the set passed validation (non-empty names of at most
/// [`MAX_NAME_LEN`] bytes, user pins with at least one device); a pin is held
/// once however often it is added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinSet {
    pins: BTreeSet<Pin>,
}

impl PinSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `pin`; returns false if it was already there. An invalid pin is
    /// refused with [`ReplicationError::InvalidConfig`].
    pub fn add(&mut self, pin: Pin) -> Result<bool, ReplicationError> {
        pin.validate()?;
        Ok(self.pins.insert(pin))
    }

    /// Removes `pin`; returns whether it was there.
    pub fn remove(&mut self, pin: &Pin) -> bool {
        self.pins.remove(pin)
    }

    /// Every pin, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = &Pin> {
        self.pins.iter()
    }

    /// Number of pins.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// True when there are no pins.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// The pins covering document `id` of `collection` (`id` = `None`: the
    /// pins on the whole collection).
    pub fn covering<'a>(
        &'a self,
        collection: &'a str,
        id: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Pin> + 'a {
        self.pins
            .iter()
            .filter(move |p| p.scope().covers(collection, id))
    }

    /// Where replicas of the document may go, from the user and region pins
    /// covering it.
    pub fn placement(&self, collection: &str, id: Option<&str>) -> Placement {
        let mut placement = Placement::default();
        for pin in self.covering(collection, id) {
            match pin {
                Pin::User { devices, .. } => placement
                    .devices
                    .get_or_insert_with(BTreeSet::new)
                    .extend(devices.iter().copied()),
                Pin::NetworkRegion { region, .. } => {
                    placement
                        .regions
                        .get_or_insert_with(BTreeSet::new)
                        .insert(region.clone());
                }
                Pin::App { .. } => {}
            }
        }
        placement
    }

    /// The kind of the first pin that keeps the document on device `local`:
    /// a user pin naming `local`, or an app pin (app pins are local to this
    /// device). Region pins constrain placement, not retention.
    pub fn retained_by(
        &self,
        collection: &str,
        id: Option<&str>,
        local: &PeerId,
    ) -> Option<PinKind> {
        self.covering(collection, id).find_map(|pin| match pin {
            Pin::User { devices, .. } if devices.contains(local) => Some(PinKind::User),
            Pin::App { .. } => Some(PinKind::App),
            _ => None,
        })
    }
}

/// Rank of a transport for proximity: 0 nearest. Wired 0, Wi-Fi Direct 1,
/// Bluetooth 2 (the local transports), Internet 3, LoRa 4.
pub fn proximity_rank(t: TransportType) -> u8 {
    match t {
        TransportType::Wired => 0,
        TransportType::WifiDirect => 1,
        TransportType::Bluetooth => 2,
        TransportType::Internet => 3,
        TransportType::Lora => 4,
        // `TransportType` is non-exhaustive: an unknown future transport ranks last.
        #[allow(unreachable_patterns)]
        _ => 5,
    }
}

/// True for the transports that only reach peers nearby (wired LAN, Wi-Fi
/// Direct, Bluetooth).
pub fn is_local_transport(t: TransportType) -> bool {
    proximity_rank(t) <= 2
}

/// A peer that could hold a replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The peer.
    pub peer: PeerId,
    /// The transports it is reachable on now.
    pub transports: Vec<TransportType>,
    /// Local reputation score in `0.0..=1.0`.
    pub reputation: f64,
    /// The physical network the peer sits on (e.g. a LAN or site id), if known.
    pub network: Option<String>,
    /// The peer's region tag, if known.
    pub region: Option<String>,
}

impl Candidate {
    /// The `PeerInfo::metadata` key read as the physical network id (text).
    pub const NETWORK_KEY: &'static str = "network";
    /// The `PeerInfo::metadata` key read as the region tag (text).
    pub const REGION_KEY: &'static str = "region";

    /// A candidate with no network or region known.
    pub fn new(peer: PeerId, transports: Vec<TransportType>, reputation: f64) -> Self {
        Candidate {
            peer,
            transports,
            reputation,
            network: None,
            region: None,
        }
    }

    /// Builder: the physical network id.
    pub fn on_network(mut self, network: &str) -> Self {
        self.network = Some(network.to_owned());
        self
    }

    /// Builder: the region tag.
    pub fn in_region(mut self, region: &str) -> Self {
        self.region = Some(region.to_owned());
        self
    }

    /// From a peer table entry: transports and reputation as they are, network
    /// and region from the text metadata [`Self::NETWORK_KEY`] /
    /// [`Self::REGION_KEY`] (absent or not text: unknown).
    pub fn from_peer_info(info: &PeerInfo) -> Self {
        let text = |key: &str| match info.metadata.get(key) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        };
        Candidate {
            peer: info.peer_id,
            transports: info.transports.clone(),
            reputation: info.reputation,
            network: text(Self::NETWORK_KEY),
            region: text(Self::REGION_KEY),
        }
    }

    /// The rank of the nearest transport ([`proximity_rank`]); a candidate with
    /// no transport ranks after every real one.
    pub fn proximity(&self) -> u8 {
        self.transports
            .iter()
            .map(|t| proximity_rank(*t))
            .min()
            .unwrap_or(u8::MAX)
    }

    /// True when the candidate's known network differs from `origin_network`.
    /// Unknown on either side is not diverse.
    pub fn is_diverse_from(&self, origin_network: Option<&str>) -> bool {
        match (self.network.as_deref(), origin_network) {
            (Some(mine), Some(origin)) => mine != origin,
            _ => false,
        }
    }
}

/// The node replicating the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Its own peer id (never chosen as a partner).
    pub peer: PeerId,
    /// The physical network it sits on, if known.
    pub network: Option<String>,
}

/// Why a candidate was not eligible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exclusion {
    /// It is the origin itself.
    Origin,
    /// The same peer appeared earlier in the candidate list.
    Duplicate,
    /// Reputation below [`MIN_REPUTATION`] or not a number.
    LowReputation,
    /// A user pin restricts replicas to other devices.
    NotPinnedDevice,
    /// A region pin restricts replicas to other regions.
    OutsideRegion,
    /// Not reachable on any transport.
    Unreachable,
    /// Outside the reach of the data ([`crate::reach`]).
    OutOfReach,
}

/// Whether the diversity rule holds for a selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diversity {
    /// At least one chosen partner is on another physical network than the origin.
    Met,
    /// No eligible candidate is provably on another physical network.
    Unavailable,
}

/// The outcome of [`select_partners`].
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// The chosen partners, nearest first; at most the factor, fewer when
    /// fewer candidates are eligible.
    pub partners: Vec<PeerId>,
    /// The factor that was asked for.
    pub factor: u32,
    /// Whether diversity holds.
    pub diversity: Diversity,
    /// The candidates that were not eligible, with the reason.
    pub excluded: Vec<(PeerId, Exclusion)>,
}

impl Selection {
    /// True when fewer partners were chosen than the factor asks.
    pub fn is_short(&self) -> bool {
        self.partners.len() < self.factor as usize
    }
}

fn exclusion(c: &Candidate, origin: &Origin, placement: &Placement) -> Option<Exclusion> {
    if c.peer == origin.peer {
        return Some(Exclusion::Origin);
    }
    if c.reputation.is_nan() || c.reputation < MIN_REPUTATION {
        return Some(Exclusion::LowReputation);
    }
    if let Some(devices) = &placement.devices
        && !devices.contains(&c.peer)
    {
        return Some(Exclusion::NotPinnedDevice);
    }
    if let Some(regions) = &placement.regions
        && !c.region.as_ref().is_some_and(|r| regions.contains(r))
    {
        return Some(Exclusion::OutsideRegion);
    }
    if c.transports.is_empty() {
        return Some(Exclusion::Unreachable);
    }
    None
}

/// Chooses up to `factor` replication partners for document (or blob) `id`
/// of `collection`, or the whole collection when `None`, among `candidates`
/// (typically the connected peers, as [`Candidate::from_peer_info`]) that
/// the reach of the data admits: the one path by which this node picks who
/// gets a copy, for document versions, blobs and shards, and
/// [`ReplicationManager::partners_for`].
///
/// `admits` is the reach check: whether the candidate may receive the data
/// (each caller knows its trust relations and what else hides data, such as
/// collections local to the node); it is asked once per peer.
///
/// Promises: a peer listed more than once is judged by its first entry
/// (later ones are [`Exclusion::Duplicate`]); a peer `admits` refuses is never
/// a partner ([`Exclusion::OutOfReach`]); among the others every promise of
/// [`select_partners`] holds, with `factor`, `origin` and `pins`. The result
/// depends only on the inputs.
pub fn partners_in_reach(
    factor: u32,
    collection: &str,
    id: Option<&str>,
    origin: &Origin,
    pins: &PinSet,
    candidates: impl IntoIterator<Item = Candidate>,
    mut admits: impl FnMut(&Candidate) -> bool,
) -> Selection {
    let mut seen = BTreeSet::new();
    let mut excluded = Vec::new();
    let mut admitted = Vec::new();
    for c in candidates {
        if !seen.insert(c.peer) {
            excluded.push((c.peer, Exclusion::Duplicate));
        } else if admits(&c) {
            admitted.push(c);
        } else {
            excluded.push((c.peer, Exclusion::OutOfReach));
        }
    }
    let mut selection = select_partners(factor, collection, id, origin, &admitted, pins);
    selection.excluded.extend(excluded);
    selection
}

/// Chooses up to `factor` replication partners for document `id` (or the whole
/// collection when `None`) of `collection`, by the rules in the module docs.
///
/// Promises: every partner is a candidate with reputation >= 0.5, reachable,
/// not the origin, inside every user-pin device set and region pin covering
/// the document, listed once; at most `factor` partners; if any eligible
/// candidate is on another known physical network than the origin, at least
/// one partner is ([`Diversity::Met`]). The result depends only on the inputs.
pub fn select_partners(
    factor: u32,
    collection: &str,
    id: Option<&str>,
    origin: &Origin,
    candidates: &[Candidate],
    pins: &PinSet,
) -> Selection {
    let placement = pins.placement(collection, id);
    let mut seen = BTreeSet::new();
    let mut excluded = Vec::new();
    let mut eligible: Vec<&Candidate> = Vec::new();
    for c in candidates {
        if !seen.insert(c.peer) {
            excluded.push((c.peer, Exclusion::Duplicate));
            continue;
        }
        match exclusion(c, origin, &placement) {
            Some(why) => excluded.push((c.peer, why)),
            None => eligible.push(c),
        }
    }
    eligible.sort_by(|a, b| {
        a.proximity()
            .cmp(&b.proximity())
            .then(b.reputation.total_cmp(&a.reputation))
            .then(a.peer.cmp(&b.peer))
    });
    let want = factor as usize;
    let origin_net = origin.network.as_deref();
    let mut chosen: Vec<&Candidate> = eligible.iter().take(want).copied().collect();
    let mut diversity = if chosen.iter().any(|c| c.is_diverse_from(origin_net)) {
        Diversity::Met
    } else {
        Diversity::Unavailable
    };
    if diversity == Diversity::Unavailable
        && want > 0
        && let Some(best) = eligible.iter().find(|c| c.is_diverse_from(origin_net))
    {
        if chosen.len() == want {
            chosen.pop();
        }
        chosen.push(best);
        diversity = Diversity::Met;
    }
    Selection {
        partners: chosen.iter().map(|c| c.peer).collect(),
        factor,
        diversity,
        excluded,
    }
}

/// What [`gc_eligibility`] is asked about: one stored document version or blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcItem<'a> {
    /// Its collection.
    pub collection: &'a str,
    /// Its document id, or `None` for collection-level data.
    pub id: Option<&'a str>,
    /// When it was last written or used, Unix milliseconds.
    pub last_used_ms: u64,
    /// True when something still refers to it (a current version, a DAG
    /// parent still needed, an open subscription...).
    pub referenced: bool,
    /// Peers other than this node that confirmed holding a copy.
    pub confirmed_replicas: &'a BTreeSet<PeerId>,
}

/// Why an item must be kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// A user or app pin keeps it on this device.
    Pinned(PinKind),
    /// Something still refers to it.
    Referenced,
    /// Younger than the TTL.
    TooYoung {
        /// Its age in milliseconds (0 if it claims to be from the future).
        age_ms: u64,
        /// The TTL.
        ttl_ms: u64,
    },
    /// Fewer copies are confirmed on other peers than the factor asks.
    TooFewReplicas {
        /// Distinct other peers confirmed.
        confirmed: usize,
        /// The collection's factor.
        needed: u32,
    },
}

/// The verdict of [`gc_eligibility`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcVerdict {
    /// It may be deleted from this device.
    Eligible,
    /// It must be kept, for every reason listed (never empty).
    Keep(Vec<KeepReason>),
}

impl GcVerdict {
    /// True for [`GcVerdict::Eligible`].
    pub fn is_eligible(&self) -> bool {
        matches!(self, GcVerdict::Eligible)
    }
}

/// Decides whether `item` may be garbage-collected on device `local` at `now_ms`
/// (seed 5.2): eligible only if no user/app pin keeps it here, nothing refers
/// to it, it is at least the TTL old, and at least the collection's factor of
/// distinct other peers (not `local`) confirmed a copy. Otherwise every
/// failing condition is listed.
pub fn gc_eligibility(
    config: &ReplicationConfig,
    pins: &PinSet,
    local: &PeerId,
    item: &GcItem<'_>,
    now_ms: u64,
) -> GcVerdict {
    let mut reasons = Vec::new();
    if let Some(kind) = pins.retained_by(item.collection, item.id, local) {
        reasons.push(KeepReason::Pinned(kind));
    }
    if item.referenced {
        reasons.push(KeepReason::Referenced);
    }
    let age_ms = now_ms.saturating_sub(item.last_used_ms);
    let ttl_ms = config.gc_ttl_ms();
    if age_ms < ttl_ms {
        reasons.push(KeepReason::TooYoung { age_ms, ttl_ms });
    }
    let confirmed = item
        .confirmed_replicas
        .iter()
        .filter(|p| *p != local)
        .count();
    let needed = config.factor_for(item.collection);
    if confirmed < needed as usize {
        reasons.push(KeepReason::TooFewReplicas { confirmed, needed });
    }
    if reasons.is_empty() {
        GcVerdict::Eligible
    } else {
        GcVerdict::Keep(reasons)
    }
}

/// The replication decisions of one node in one place (seed 6's
/// `replicationManager`): its factors, pins and reach policy, and who it is.
///
/// Promises the same as the functions it combines; in addition a partner is
/// always admitted by the reach of the data.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicationManager {
    /// This node.
    pub local: Origin,
    /// Replication factors and the GC TTL.
    pub config: ReplicationConfig,
    /// Pins.
    pub pins: PinSet,
    /// Who may receive what.
    pub reach: ReachPolicy,
}

impl ReplicationManager {
    /// A manager for node `local` with the seed's factors, no pins and the
    /// default reach policy ([`ReachPolicy::default`]).
    pub fn new(local: Origin) -> Self {
        ReplicationManager {
            local,
            config: ReplicationConfig::default(),
            pins: PinSet::new(),
            reach: ReachPolicy::default(),
        }
    }

    /// The factor of `collection` (seed: `getFactorForCollection`).
    pub fn factor_for(&self, collection: &str) -> u32 {
        self.config.factor_for(collection)
    }

    /// Chooses partners for document `id` of `collection` among `candidates`,
    /// each with this node's trust relation to it: a peer listed again is
    /// judged by its first entry only; the reach of the data removes every
    /// peer it does not admit ([`Exclusion::OutOfReach`]), then
    /// [`select_partners`] applies the seed's rules with the collection's factor.
    pub fn partners_for(
        &self,
        collection: &str,
        id: Option<&str>,
        candidates: &[(Candidate, Trust)],
    ) -> Selection {
        let reach = self.reach.reach_of(collection, id);
        // The trust of each peer's first entry: the entry it is judged by.
        let mut trust: BTreeMap<PeerId, Trust> = BTreeMap::new();
        for (c, t) in candidates {
            trust.entry(c.peer).or_insert(*t);
        }
        partners_in_reach(
            self.factor_for(collection),
            collection,
            id,
            &self.local,
            &self.pins,
            candidates.iter().map(|(c, _)| c.clone()),
            |c| {
                trust
                    .get(&c.peer)
                    .is_some_and(|t| reach.admits(&Relation::new(c.peer, *t)))
            },
        )
    }

    /// The queue item that replicates version `version` of a document with the
    /// collection's factor.
    pub fn replicate(&self, collection: &str, id: &str, version: ContentId) -> SyncItem {
        SyncItem::Replicate {
            collection: collection.to_owned(),
            id: id.to_owned(),
            version,
            factor: self.factor_for(collection),
        }
    }

    /// The queue item that replicates the tombstone version of a deleted
    /// document with the collection's factor.
    pub fn tombstone(&self, collection: &str, id: &str, version: ContentId) -> SyncItem {
        SyncItem::Tombstone {
            collection: collection.to_owned(),
            id: id.to_owned(),
            version,
            factor: self.factor_for(collection),
        }
    }

    /// The queue item that pushes blob (or shard) `blob` referred to by
    /// document `id` (or by the collection) with the collection's factor.
    pub fn push_blob(&self, collection: &str, id: Option<&str>, blob: ContentId) -> SyncItem {
        SyncItem::PushBlob {
            blob,
            collection: collection.to_owned(),
            id: id.map(str::to_owned),
            factor: self.factor_for(collection),
        }
    }

    /// [`gc_eligibility`] on this node.
    pub fn gc_eligibility(&self, item: &GcItem<'_>, now_ms: u64) -> GcVerdict {
        gc_eligibility(&self.config, &self.pins, &self.local.peer, item, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_digest([n; 32])
    }

    fn origin() -> Origin {
        Origin {
            peer: peer(0),
            network: Some("home".into()),
        }
    }

    fn cand(n: u8, t: TransportType, rep: f64) -> Candidate {
        Candidate::new(peer(n), vec![t], rep).on_network("home")
    }

    fn select(factor: u32, cands: &[Candidate], pins: &PinSet) -> Selection {
        select_partners(factor, "c", Some("d"), &origin(), cands, pins)
    }

    #[test]
    fn seed_default_factors() {
        let c = ReplicationConfig::default();
        assert_eq!(c.factor_for("users"), 3);
        assert_eq!(c.factor_for("permissions"), 5);
        assert_eq!(c.factor_for("transactions"), 3);
        assert_eq!(c.factor_for("groups"), 3);
        assert_eq!(c.factor_for("notifications"), 2);
        assert_eq!(c.factor_for("recipes"), 3);
        assert_eq!(c.gc_ttl_ms(), 30 * 86_400_000);
        assert_eq!(c, ReplicationConfig::seed_defaults());
    }

    #[test]
    fn configured_factors_and_default() {
        let mut c = ReplicationConfig::default()
            .with_factor("recipes", 7)
            .unwrap();
        c.set_default_factor(2).unwrap();
        assert_eq!(c.factor_for("recipes"), 7);
        assert_eq!(c.factor_for("other"), 2);
        assert_eq!(c.factor_for("users"), 3);
        c.set_factor("users", 4).unwrap();
        assert_eq!(c.factor_for("users"), 4);
    }

    #[test]
    fn invalid_factors_and_names_are_typed_errors() {
        let mut c = ReplicationConfig::default();
        for bad in [0, MAX_FACTOR + 1, u32::MAX] {
            assert!(matches!(
                c.set_factor("users", bad),
                Err(ReplicationError::InvalidConfig(_))
            ));
            assert!(matches!(
                c.set_default_factor(bad),
                Err(ReplicationError::InvalidConfig(_))
            ));
        }
        assert!(c.set_factor("", 3).is_err());
        assert!(c.set_factor(&"x".repeat(MAX_NAME_LEN + 1), 3).is_err());
        assert!(c.set_gc_ttl_ms(0).is_err());
        assert_eq!(
            c,
            ReplicationConfig::default(),
            "refused settings change nothing"
        );
    }

    #[test]
    fn proximity_orders_local_before_internet_before_lora() {
        let cands = [
            cand(1, TransportType::Lora, 0.9),
            cand(2, TransportType::Internet, 0.9),
            cand(3, TransportType::Bluetooth, 0.6),
            cand(4, TransportType::WifiDirect, 0.6),
            cand(5, TransportType::Wired, 0.6),
        ];
        let s = select(5, &cands, &PinSet::new());
        assert_eq!(
            s.partners,
            vec![peer(5), peer(4), peer(3), peer(2), peer(1)]
        );
        assert!(is_local_transport(TransportType::Bluetooth));
        assert!(!is_local_transport(TransportType::Internet));
        assert!(!is_local_transport(TransportType::Lora));
    }

    #[test]
    fn nearest_transport_of_a_multi_homed_peer_counts() {
        let multi = Candidate::new(
            peer(1),
            vec![TransportType::Internet, TransportType::Wired],
            0.6,
        )
        .on_network("home");
        let s = select(
            1,
            &[cand(2, TransportType::Internet, 0.9), multi],
            &PinSet::new(),
        );
        assert_eq!(s.partners, vec![peer(1)]);
    }

    #[test]
    fn reputation_breaks_ties_within_a_rank() {
        let cands = [
            cand(1, TransportType::Wired, 0.6),
            cand(2, TransportType::Wired, 0.95),
            cand(3, TransportType::Wired, 0.7),
        ];
        assert_eq!(
            select(2, &cands, &PinSet::new()).partners,
            vec![peer(2), peer(3)]
        );
    }

    #[test]
    fn low_reputation_is_never_chosen() {
        let cands = [
            cand(1, TransportType::Wired, 0.49),
            cand(2, TransportType::Wired, f64::NAN),
            cand(3, TransportType::Internet, 0.5),
        ];
        let s = select(3, &cands, &PinSet::new());
        assert_eq!(s.partners, vec![peer(3)]);
        assert!(s.is_short());
        assert!(s.excluded.contains(&(peer(1), Exclusion::LowReputation)));
        assert!(s.excluded.contains(&(peer(2), Exclusion::LowReputation)));
    }

    #[test]
    fn origin_duplicates_and_unreachable_are_excluded() {
        let cands = [
            cand(0, TransportType::Wired, 0.9),
            cand(1, TransportType::Wired, 0.9),
            cand(1, TransportType::Wired, 0.9),
            Candidate::new(peer(2), vec![], 0.9),
        ];
        let s = select(3, &cands, &PinSet::new());
        assert_eq!(s.partners, vec![peer(1)]);
        assert_eq!(
            s.excluded,
            vec![
                (peer(0), Exclusion::Origin),
                (peer(1), Exclusion::Duplicate),
                (peer(2), Exclusion::Unreachable)
            ]
        );
    }

    #[test]
    fn diversity_replaces_the_last_near_partner() {
        let cands = [
            cand(1, TransportType::Wired, 0.9),
            cand(2, TransportType::Wired, 0.8),
            cand(3, TransportType::Wired, 0.7),
            Candidate::new(peer(4), vec![TransportType::Internet], 0.6).on_network("office"),
            Candidate::new(peer(5), vec![TransportType::Lora], 0.9).on_network("farm"),
        ];
        let s = select(3, &cands, &PinSet::new());
        assert_eq!(s.partners, vec![peer(1), peer(2), peer(4)]);
        assert_eq!(s.diversity, Diversity::Met);
    }

    #[test]
    fn diversity_already_met_changes_nothing_and_unknown_networks_do_not_count() {
        let cands = [
            cand(1, TransportType::Wired, 0.9),
            Candidate::new(peer(2), vec![TransportType::Wired], 0.8).on_network("lab"),
            cand(3, TransportType::Wired, 0.7),
        ];
        let s = select(2, &cands, &PinSet::new());
        assert_eq!(s.partners, vec![peer(1), peer(2)]);
        assert_eq!(s.diversity, Diversity::Met);

        let unknown = [
            cand(1, TransportType::Wired, 0.9),
            Candidate::new(peer(2), vec![TransportType::Internet], 0.9),
        ];
        let s = select(1, &unknown, &PinSet::new());
        assert_eq!(s.partners, vec![peer(1)]);
        assert_eq!(s.diversity, Diversity::Unavailable);
    }

    #[test]
    fn user_pin_restricts_to_named_devices() {
        let mut pins = PinSet::new();
        pins.add(Pin::User {
            scope: Scope::collection("c"),
            devices: [peer(3), peer(4)].into(),
        })
        .unwrap();
        let cands = [
            cand(1, TransportType::Wired, 0.9),
            cand(3, TransportType::Internet, 0.9),
            cand(4, TransportType::Lora, 0.9),
        ];
        let s = select(3, &cands, &pins);
        assert_eq!(s.partners, vec![peer(3), peer(4)]);
        assert!(s.excluded.contains(&(peer(1), Exclusion::NotPinnedDevice)));
        // Another collection is not restricted.
        let other = select_partners(3, "x", None, &origin(), &cands, &pins);
        assert_eq!(other.partners.len(), 3);
    }

    #[test]
    fn document_pin_covers_only_its_document() {
        let mut pins = PinSet::new();
        pins.add(Pin::User {
            scope: Scope::document("c", "d"),
            devices: [peer(3)].into(),
        })
        .unwrap();
        let cands = [
            cand(1, TransportType::Wired, 0.9),
            cand(3, TransportType::Wired, 0.9),
        ];
        assert_eq!(select(2, &cands, &pins).partners, vec![peer(3)]);
        let other_doc = select_partners(2, "c", Some("e"), &origin(), &cands, &pins);
        assert_eq!(other_doc.partners.len(), 2);
    }

    #[test]
    fn region_pin_restricts_to_matching_tags() {
        let mut pins = PinSet::new();
        pins.add(Pin::NetworkRegion {
            scope: Scope::collection("c"),
            region: "eu".into(),
        })
        .unwrap();
        let cands = [
            cand(1, TransportType::Wired, 0.9).in_region("us"),
            cand(2, TransportType::Wired, 0.9),
            cand(3, TransportType::Internet, 0.9).in_region("eu"),
        ];
        let s = select(3, &cands, &pins);
        assert_eq!(s.partners, vec![peer(3)]);
        assert!(s.excluded.contains(&(peer(1), Exclusion::OutsideRegion)));
        assert!(s.excluded.contains(&(peer(2), Exclusion::OutsideRegion)));
    }

    #[test]
    fn pin_set_add_remove_and_validation() {
        let mut pins = PinSet::new();
        let app = Pin::App {
            scope: Scope::collection("c"),
            app: "wallet".into(),
        };
        assert!(pins.add(app.clone()).unwrap());
        assert!(!pins.add(app.clone()).unwrap());
        assert_eq!(pins.len(), 1);
        assert_eq!(app.kind(), PinKind::App);
        assert!(pins.remove(&app));
        assert!(!pins.remove(&app));
        assert!(pins.is_empty());
        let empty_devices = Pin::User {
            scope: Scope::collection("c"),
            devices: BTreeSet::new(),
        };
        assert!(matches!(
            pins.add(empty_devices),
            Err(ReplicationError::InvalidConfig(_))
        ));
        let empty_region = Pin::NetworkRegion {
            scope: Scope::collection("c"),
            region: String::new(),
        };
        assert!(pins.add(empty_region).is_err());
        assert!(
            pins.add(Pin::App {
                scope: Scope::document("", "d"),
                app: "a".into()
            })
            .is_err()
        );
    }

    #[test]
    fn candidate_from_peer_info_reads_metadata() {
        let mut info = PeerInfo::new(peer(7), TransportType::Wired, 1);
        info.reputation = 0.8;
        info.metadata
            .insert("network".into(), Value::Text("lan-a".into()));
        info.metadata.insert("region".into(), Value::Integer(3));
        let c = Candidate::from_peer_info(&info);
        assert_eq!(c.network.as_deref(), Some("lan-a"));
        assert_eq!(c.region, None);
        assert_eq!(c.reputation, 0.8);
        assert_eq!(c.proximity(), 0);
    }

    #[test]
    fn manager_filters_by_reach_before_selecting() {
        use crate::reach::Reach;
        let mut m = ReplicationManager::new(origin());
        m.reach.set_collection("family", Reach::Local);
        let cands = [
            (cand(1, TransportType::Wired, 0.9), Trust::Stranger),
            (cand(2, TransportType::Internet, 0.9), Trust::Family),
            (cand(3, TransportType::Wired, 0.2), Trust::OwnDevice),
        ];
        let s = m.partners_for("family", Some("d"), &cands);
        assert_eq!(s.partners, vec![peer(2)]);
        assert_eq!(s.factor, 3);
        assert!(s.excluded.contains(&(peer(1), Exclusion::OutOfReach)));
        assert!(s.excluded.contains(&(peer(3), Exclusion::LowReputation)));
        // Commons by default: the stranger is admitted elsewhere.
        let s = m.partners_for("notifications", None, &cands);
        assert_eq!(s.partners, vec![peer(1), peer(2)]);
        assert_eq!(s.factor, 2);
        assert_eq!(
            m.replicate("permissions", "p", ContentId(vec![1])).factor(),
            5
        );
        assert_eq!(m.tombstone("users", "u", ContentId(vec![1])).factor(), 3);
        // Every queue item names the scope whose reach gates sending it.
        m.reach.set_document("files", "secret", Reach::Private);
        let push = m.push_blob("files", Some("secret"), ContentId(vec![2]));
        assert_eq!(push.factor(), 3);
        assert_eq!(push.reach_scope(), ("files", Some("secret")));
        let (c, id) = push.reach_scope();
        assert!(
            m.reach
                .ensure_admitted(c, id, &Relation::new(peer(1), Trust::Family))
                .is_err()
        );
        let whole = m.push_blob("files", None, ContentId(vec![2]));
        let (c, id) = whole.reach_scope();
        assert!(
            m.reach
                .ensure_admitted(c, id, &Relation::new(peer(1), Trust::Stranger))
                .is_ok()
        );
        assert_eq!(
            m.replicate("family", "d", ContentId(vec![3])).reach_scope(),
            ("family", Some("d"))
        );
        let replicas: BTreeSet<_> = [peer(1), peer(2), peer(3)].into();
        assert!(m.gc_eligibility(&old_item(&replicas), NOW).is_eligible());
    }

    fn old_item<'a>(replicas: &'a BTreeSet<PeerId>) -> GcItem<'a> {
        GcItem {
            collection: "users",
            id: Some("u1"),
            last_used_ms: 0,
            referenced: false,
            confirmed_replicas: replicas,
        }
    }

    const NOW: u64 = DEFAULT_GC_TTL_MS + 1;

    #[test]
    fn gc_eligible_when_every_condition_holds() {
        let replicas: BTreeSet<_> = [peer(1), peer(2), peer(3)].into();
        let v = gc_eligibility(
            &ReplicationConfig::default(),
            &PinSet::new(),
            &peer(0),
            &old_item(&replicas),
            NOW,
        );
        assert!(v.is_eligible());
    }

    #[test]
    fn gc_keeps_with_each_reason() {
        let cfg = ReplicationConfig::default();
        let local = peer(0);
        let three: BTreeSet<_> = [peer(1), peer(2), peer(3)].into();
        // Too few replicas: the local copy does not count.
        let two_and_me: BTreeSet<_> = [peer(0), peer(1), peer(2)].into();
        assert_eq!(
            gc_eligibility(&cfg, &PinSet::new(), &local, &old_item(&two_and_me), NOW),
            GcVerdict::Keep(vec![KeepReason::TooFewReplicas {
                confirmed: 2,
                needed: 3
            }])
        );
        // Too young: exactly one millisecond short of the TTL.
        let young = GcItem {
            last_used_ms: 2,
            ..old_item(&three)
        };
        assert_eq!(
            gc_eligibility(&cfg, &PinSet::new(), &local, &young, NOW),
            GcVerdict::Keep(vec![KeepReason::TooYoung {
                age_ms: DEFAULT_GC_TTL_MS - 1,
                ttl_ms: DEFAULT_GC_TTL_MS
            }])
        );
        // From the future: age 0.
        let future = GcItem {
            last_used_ms: NOW + 5,
            ..old_item(&three)
        };
        assert!(!gc_eligibility(&cfg, &PinSet::new(), &local, &future, NOW).is_eligible());
        // Referenced.
        let referenced = GcItem {
            referenced: true,
            ..old_item(&three)
        };
        assert_eq!(
            gc_eligibility(&cfg, &PinSet::new(), &local, &referenced, NOW),
            GcVerdict::Keep(vec![KeepReason::Referenced])
        );
        // Pinned by an app, by a user pin naming this device; a user pin naming
        // other devices or a region pin does not retain.
        let mut pins = PinSet::new();
        pins.add(Pin::User {
            scope: Scope::collection("users"),
            devices: [peer(9)].into(),
        })
        .unwrap();
        pins.add(Pin::NetworkRegion {
            scope: Scope::collection("users"),
            region: "eu".into(),
        })
        .unwrap();
        assert!(gc_eligibility(&cfg, &pins, &local, &old_item(&three), NOW).is_eligible());
        pins.add(Pin::User {
            scope: Scope::document("users", "u1"),
            devices: [local].into(),
        })
        .unwrap();
        assert_eq!(
            gc_eligibility(&cfg, &pins, &local, &old_item(&three), NOW),
            GcVerdict::Keep(vec![KeepReason::Pinned(PinKind::User)])
        );
        let mut app = PinSet::new();
        app.add(Pin::App {
            scope: Scope::collection("users"),
            app: "id".into(),
        })
        .unwrap();
        assert_eq!(
            gc_eligibility(&cfg, &app, &local, &old_item(&three), NOW),
            GcVerdict::Keep(vec![KeepReason::Pinned(PinKind::App)])
        );
    }

    #[test]
    fn gc_lists_every_failing_reason_and_uses_the_collection_factor() {
        let cfg = ReplicationConfig::default();
        let none = BTreeSet::new();
        let item = GcItem {
            collection: "permissions",
            id: None,
            last_used_ms: NOW,
            referenced: true,
            confirmed_replicas: &none,
        };
        let GcVerdict::Keep(reasons) = gc_eligibility(&cfg, &PinSet::new(), &peer(0), &item, NOW)
        else {
            panic!("must keep");
        };
        assert_eq!(reasons.len(), 3);
        assert!(reasons.contains(&KeepReason::TooFewReplicas {
            confirmed: 0,
            needed: 5
        }));
        let mut short = cfg.clone();
        short.set_gc_ttl_ms(1).unwrap();
        let four: BTreeSet<_> = (1..=4).map(peer).collect();
        let item = GcItem {
            collection: "permissions",
            id: None,
            last_used_ms: 0,
            referenced: false,
            confirmed_replicas: &four,
        };
        assert!(!gc_eligibility(&short, &PinSet::new(), &peer(0), &item, 10).is_eligible());
        let five: BTreeSet<_> = (1..=5).map(peer).collect();
        let item = GcItem {
            confirmed_replicas: &five,
            ..item
        };
        assert!(gc_eligibility(&short, &PinSet::new(), &peer(0), &item, 10).is_eligible());
    }
}
