//! Anti-entropy (seed 5.4, 7.3): two replicas find and exchange exactly the
//! versions one has and the other lacks, with traffic that grows with the
//! number of differences, not with the size of the database.
//!
//! # Protocol
//! One [`Session`] per peer per reconciliation, sans-io: bytes in, bytes and
//! [`Event`]s out. Both sides run the same state machine; one calls
//! [`Session::start`]. Messages strictly alternate; each is one or more
//! [frames](frame::Frame) (the last flagged as the end).
//!
//! 1. *Hello* (initiator): for every collection, the tail of its Merkle root
//!    CID and a summary of its root node, or, for a collection of more than
//!    [`Config::deep_hello_min`] documents, summaries of the root's sixteen
//!    children (saving the first level's message).
//! 2. Every later message answers the previous one. For each node summary the
//!    peer sent, the receiver compares it with its own node at the same path:
//!    - equal root tails: nothing to do for that collection;
//!    - a branch: for each child whose 4-byte CID tail differs, it sends a
//!      summary of its own child (so every one-way message descends one
//!      level, and a round trip two); a child only it has is pushed whole; a
//!      child only the peer has is answered with an empty summary;
//!    - a subtree of at most [`Config::entries_threshold`] documents is
//!      summarized by its entries instead: (first 8 bytes of `sha256(id)`,
//!      8-byte tails of the head CIDs) per document;
//!    - an entries summary is compared document by document: a document only
//!      the receiver has is pushed with its whole history; one whose heads
//!      the receiver all has is pushed exactly from there; otherwise the
//!      receiver sends a *need* with its own heads and a few older versions
//!      (the tail), and the peer pushes exactly what lies above them (and
//!      needs in turn if it lacks some of the receiver's heads);
//!    - an empty summary means the peer has nothing there: everything is pushed.
//! 3. Pushes carry (CID, bytes), parents before children. The receiver checks
//!    the bytes against the CID first: a mismatch is not applied and is
//!    reported as [`Event::Rejected`] naming the peer, as is a version the
//!    store refuses (bad signature, author, clock). Valid versions merge
//!    through the store's CRDT ([`ReconcileStore::apply_version`]); one whose
//!    parents are missing waits and its parents are asked for by CID.
//! 4. A message that asks for nothing is *final* and carries the sender's
//!    full database root CID. The receiver compares it with its own root:
//!    equal ends the session; different (a 4-byte tail collision, or writes
//!    during the session) starts another pass, up to [`Config::max_passes`].
//!
//! A round trip is a message and its answer: [`SessionStats::round_trips`]
//! counts every message as half of one, so a final one-way push counts half.

mod dag;
pub mod frame;
pub mod fuzzing;

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_types::{ContentId, PeerId};

use crate::ReplicationError;
use crate::merkle::{ApplyResult, MerkleNode, ReconcileStore, entries_under, nibble, short, under};
use dag::DocDag;
use frame::{
    ColPart, DIGEST_LEN, EntrySummary, FLAG_END, FLAG_HELLO, Frame, MAX_LISTED_HEADS, Need,
    SHORT_LEN, Short, Summary,
};

/// Settings of a [`Session`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// A differing subtree of at most this many documents is sent as its
    /// entries instead of being descended further.
    pub entries_threshold: u64,
    /// A collection holding more than this many documents opens with its
    /// root's sixteen children summarized (one level deeper than the root
    /// alone). That costs about 1 KiB once per collection and saves one
    /// message on every path, which keeps a million-document collection
    /// within three round trips.
    pub deep_hello_min: u64,
    /// Largest frame sent or accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Largest message (all its frames) accepted, in bytes.
    pub max_message_bytes: usize,
    /// Passes before a session gives up with [`Event::Diverged`].
    pub max_passes: u32,
    /// Messages (both directions) before a session fails.
    pub max_messages: u64,
    /// Versions held back waiting for their parents, at most.
    pub max_pending: usize,
    /// Versions of one document walked, at most.
    pub max_history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            entries_threshold: 64,
            deep_hello_min: 2048 * 64,
            max_frame_bytes: 4 << 20,
            max_message_bytes: 512 << 20,
            max_passes: 3,
            max_messages: 64,
            max_pending: 100_000,
            max_history: 1_000_000,
        }
    }
}

/// Something the caller should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The peer sent a version that was refused and not applied: its bytes
    /// do not match its CID, or the store found it invalid. Charge the peer.
    Rejected {
        /// The peer that sent it.
        peer: PeerId,
        /// The CID it was sent under.
        cid: ContentId,
        /// Why it was refused.
        reason: String,
    },
    /// The roots still differed after [`Config::max_passes`] passes (for
    /// example because writes kept arriving); the session ended anyway.
    Diverged {
        /// The peer.
        peer: PeerId,
    },
}

/// Counters of one session (this side's view).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Bytes of all frames sent.
    pub bytes_sent: u64,
    /// Bytes of all frames received.
    pub bytes_received: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Messages sent (a message is one or more frames).
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Passes run (hello messages sent or received).
    pub passes: u32,
    /// Versions received and merged.
    pub versions_applied: u64,
    /// Versions received that the store already had.
    pub versions_duplicate: u64,
    /// Versions refused ([`Event::Rejected`]).
    pub versions_rejected: u64,
    /// Versions pushed to the peer.
    pub versions_sent: u64,
    /// Bytes of version nodes pushed to the peer.
    pub version_bytes_sent: u64,
}

impl SessionStats {
    /// Round trips of the session: every message, either way, is half a round trip.
    pub fn round_trips(&self) -> f64 {
        (self.messages_sent + self.messages_received) as f64 / 2.0
    }

    /// Bytes both ways.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }
}

/// What [`Session::handle`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Frames to send to the peer, in order (empty: nothing to send).
    pub frames: Vec<Vec<u8>>,
    /// Events for the caller.
    pub events: Vec<Event>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Waiting,
    Done,
}

/// One reconciliation with one peer (see the [module docs](self)).
///
/// The session owns its view of the store: pass `&store` to borrow it for the
/// session's lifetime, or an `Arc` to keep long-lived sessions in a driver.
pub struct Session<S: ReconcileStore> {
    store: S,
    peer: PeerId,
    config: Config,
    state: State,
    stats: SessionStats,
    inbox: Option<Frame>,
    inbox_bytes: usize,
    /// Versions waiting for parents: (CID, bytes, parents missing when last tried).
    pending: Vec<(ContentId, Vec<u8>, Vec<ContentId>)>,
    requested: BTreeSet<ContentId>,
}

impl<S: ReconcileStore> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("state", &self.state)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The reply being built while a message is processed.
#[derive(Default)]
struct Reply {
    cols: BTreeMap<String, ColPart>,
    pushes: Vec<(ContentId, Vec<u8>)>,
    pushed: BTreeSet<ContentId>,
    wants: Vec<ContentId>,
}

impl Reply {
    fn col(&mut self, name: &str) -> &mut ColPart {
        self.cols.entry(name.to_owned()).or_insert_with(|| ColPart {
            name: name.to_owned(),
            ..ColPart::default()
        })
    }

    fn into_frame(self, flags: u64) -> Frame {
        Frame {
            flags,
            cols: self.cols.into_values().collect(),
            wants: self.wants,
            pushes: self.pushes,
            fin: None,
        }
    }
}

fn key_of(key_hash: &[u8; 32]) -> Short {
    let mut k = [0_u8; SHORT_LEN];
    k.copy_from_slice(&key_hash[..SHORT_LEN]);
    k
}

fn digest_of(cid: &ContentId) -> [u8; DIGEST_LEN] {
    short::<DIGEST_LEN>(cid)
}

impl<S: ReconcileStore> Session<S> {
    /// A session with `peer` over `store`.
    pub fn new(store: S, peer: PeerId, config: Config) -> Self {
        Session {
            store,
            peer,
            config,
            state: State::Idle,
            stats: SessionStats::default(),
            inbox: None,
            inbox_bytes: 0,
            pending: Vec::new(),
            requested: BTreeSet::new(),
        }
    }

    /// The peer this session reconciles with.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Counters so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// True when this side expects nothing more: it sent a final message, or
    /// received one and found equal roots (or gave up after the last pass).
    /// A new hello from the peer reopens the session.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Opens a pass as the initiator: the frames of the hello message.
    pub fn start(&mut self) -> Result<Vec<Vec<u8>>, ReplicationError> {
        let frame = self.hello()?;
        self.send(frame, State::Waiting)
    }

    /// Handles one frame from the peer. When it completes a message, the
    /// reply's frames (possibly none) and any events are returned.
    ///
    /// Errors: a frame that does not decode, exceeds a bound, or a message
    /// limit reached (the session should be dropped and the peer may be
    /// charged), or a local storage failure.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<Output, ReplicationError> {
        let frame = Frame::decode(bytes, self.config.max_frame_bytes)?;
        self.stats.bytes_received += bytes.len() as u64;
        self.stats.frames_received += 1;
        self.inbox_bytes += bytes.len();
        if self.inbox_bytes > self.config.max_message_bytes {
            return Err(ReplicationError::TooLarge {
                what: "anti-entropy message",
                size: self.inbox_bytes,
                max: self.config.max_message_bytes,
            });
        }
        let end = frame.flags & FLAG_END != 0;
        match &mut self.inbox {
            Some(inbox) => inbox.absorb(frame),
            None => self.inbox = Some(frame),
        }
        if !end {
            return Ok(Output::default());
        }
        let message = self.inbox.take().unwrap_or_default();
        self.inbox_bytes = 0;
        self.stats.messages_received += 1;
        self.check_message_budget()?;
        self.process(message)
    }

    fn check_message_budget(&self) -> Result<(), ReplicationError> {
        let total = self.stats.messages_sent + self.stats.messages_received;
        if total > self.config.max_messages {
            return Err(ReplicationError::TooLarge {
                what: "anti-entropy messages in one session",
                size: usize::try_from(total).unwrap_or(usize::MAX),
                max: usize::try_from(self.config.max_messages).unwrap_or(usize::MAX),
            });
        }
        Ok(())
    }

    fn send(&mut self, frame: Frame, next: State) -> Result<Vec<Vec<u8>>, ReplicationError> {
        let frames = frame.split(self.config.max_frame_bytes)?;
        self.stats.messages_sent += 1;
        self.stats.frames_sent += frames.len() as u64;
        self.stats.bytes_sent += frames.iter().map(|f| f.len() as u64).sum::<u64>();
        self.state = next;
        self.check_message_budget()?;
        Ok(frames)
    }

    fn hello(&mut self) -> Result<Frame, ReplicationError> {
        self.stats.passes += 1;
        let mut reply = Reply::default();
        for name in self.store.collections()? {
            let Some(root) = self.store.collection_root(&name)? else {
                continue;
            };
            let deep = matches!(
                self.store.merkle_node(&name, &[])?,
                Some(ref node @ MerkleNode::Branch(_)) if node.count() > self.config.deep_hello_min
            );
            let nodes = if deep {
                // Every child, present or not: an absent one is an empty
                // summary, so the peer pushes whatever it has there.
                let mut nodes = Vec::with_capacity(16);
                for i in 0..16_u8 {
                    nodes.push((vec![i], self.own_summary(&name, &[i])?));
                }
                nodes
            } else {
                vec![(Vec::new(), self.own_summary(&name, &[])?)]
            };
            let col = reply.col(&name);
            col.root = Some(short(&root));
            col.nodes.extend(nodes);
        }
        Ok(reply.into_frame(FLAG_HELLO))
    }

    fn process(&mut self, message: Frame) -> Result<Output, ReplicationError> {
        let mut events = Vec::new();
        let mut reply = Reply::default();
        self.apply_pushes(message.pushes, &mut events)?;
        let hello = message.flags & FLAG_HELLO != 0;
        if hello {
            self.stats.passes += 1;
            let theirs: BTreeSet<&str> = message.cols.iter().map(|c| c.name.as_str()).collect();
            for name in self.store.collections()? {
                if !theirs.contains(name.as_str()) {
                    self.push_all_under(&mut reply, &name, &[])?;
                }
            }
        }
        for part in &message.cols {
            if hello {
                let own = self.store.collection_root(&part.name)?;
                if own.as_ref().map(short::<SHORT_LEN>) == part.root && own.is_some() {
                    continue;
                }
            }
            for (path, summary) in &part.nodes {
                self.compare(&mut reply, &part.name, path, summary)?;
            }
            for need in &part.needs {
                self.serve_need(&mut reply, &part.name, need)?;
            }
        }
        for cid in &message.wants {
            self.push_version(&mut reply, cid)?;
        }
        let waiting: BTreeSet<&ContentId> = self.pending.iter().map(|(c, _, _)| c).collect();
        let mut wants = Vec::new();
        for (_, _, missing) in &self.pending {
            for p in missing {
                if !waiting.contains(p) && self.requested.insert(p.clone()) {
                    wants.push(p.clone());
                }
            }
        }
        reply.wants = wants;
        let mut frame = reply.into_frame(0);
        let frames = if frame.asks() {
            self.send(frame, State::Waiting)?
        } else if message.fin.is_some() && frame.pushes.is_empty() {
            let own = self.store.root()?;
            if message.fin.as_ref() == Some(&own) {
                self.state = State::Done;
                Vec::new()
            } else if self.stats.passes < self.config.max_passes {
                tracing::debug!(peer = %self.peer, "roots differ after a pass; another pass");
                self.pending.clear();
                self.requested.clear();
                let hello = self.hello()?;
                self.send(hello, State::Waiting)?
            } else {
                events.push(Event::Diverged { peer: self.peer });
                self.state = State::Done;
                Vec::new()
            }
        } else {
            frame.fin = Some(self.store.root()?);
            self.send(frame, State::Done)?
        };
        Ok(Output { frames, events })
    }

    fn apply_pushes(
        &mut self,
        pushes: Vec<(ContentId, Vec<u8>)>,
        events: &mut Vec<Event>,
    ) -> Result<(), ReplicationError> {
        for (cid, bytes) in pushes {
            let checked =
                ecomesh_wire::from_content_id(&cid).and_then(|c| ecomesh_wire::verify(&bytes, &c));
            if let Err(e) = checked {
                self.reject(events, cid, format!("bytes do not match the CID: {e}"));
                continue;
            }
            self.apply_one(cid, bytes, events)?;
        }
        // Versions that waited for parents: retry until nothing moves.
        loop {
            let before = self.pending.len();
            let pending = std::mem::take(&mut self.pending);
            for (cid, bytes, _) in pending {
                self.apply_one(cid, bytes, events)?;
            }
            if self.pending.len() == before {
                return Ok(());
            }
        }
    }

    fn apply_one(
        &mut self,
        cid: ContentId,
        bytes: Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Result<(), ReplicationError> {
        match self.store.apply_version(&bytes)? {
            ApplyResult::Applied => self.stats.versions_applied += 1,
            ApplyResult::AlreadyPresent => self.stats.versions_duplicate += 1,
            ApplyResult::MissingParents(missing) => {
                if self.pending.len() < self.config.max_pending
                    && !self.pending.iter().any(|(c, _, _)| *c == cid)
                {
                    self.pending.push((cid, bytes, missing));
                }
            }
            ApplyResult::Invalid(reason) => self.reject(events, cid, reason),
            ApplyResult::NotAdmitted(reason) => {
                tracing::debug!(peer = %self.peer, %reason, "version from peer not admitted");
                self.stats.versions_rejected += 1;
            }
        }
        Ok(())
    }

    fn reject(&mut self, events: &mut Vec<Event>, cid: ContentId, reason: String) {
        tracing::warn!(peer = %self.peer, %reason, "version from peer rejected");
        self.stats.versions_rejected += 1;
        events.push(Event::Rejected {
            peer: self.peer,
            cid,
            reason,
        });
    }

    /// This side's summary of the node at `path`.
    fn own_summary(&self, collection: &str, path: &[u8]) -> Result<Summary, ReplicationError> {
        match self.store.merkle_node(collection, path)? {
            None => Ok(Summary::Empty),
            Some(MerkleNode::Branch(children))
                if children.iter().flatten().map(|c| c.count).sum::<u64>()
                    > self.config.entries_threshold =>
            {
                let mut out: [Option<[u8; DIGEST_LEN]>; 16] = Default::default();
                for (slot, c) in out.iter_mut().zip(children.iter()) {
                    *slot = c.as_ref().map(|c| digest_of(&c.cid));
                }
                Ok(Summary::Branch(out))
            }
            Some(_) => Ok(Summary::Entries(
                self.own_entries(collection, path)?
                    .into_iter()
                    .map(|(key, (_, heads))| EntrySummary {
                        key,
                        heads: (heads.len() <= MAX_LISTED_HEADS).then_some(heads),
                    })
                    .collect(),
            )),
        }
    }

    /// This side's documents below `path`: key -> (id, short heads), sorted by key.
    /// Of two ids whose keys collide in 8 bytes, only the first is kept.
    fn own_entries(
        &self,
        collection: &str,
        path: &[u8],
    ) -> Result<BTreeMap<Short, (String, Vec<Short>)>, ReplicationError> {
        let mut out = BTreeMap::new();
        for e in entries_under(&self.store, collection, path)? {
            let key = key_of(&e.key_hash);
            if out.contains_key(&key) {
                tracing::warn!(collection, id = %e.id, "8-byte key collision; document skipped");
                continue;
            }
            let mut heads: Vec<Short> = self
                .store
                .heads(collection, &e.id)?
                .iter()
                .map(short)
                .collect();
            heads.sort();
            heads.dedup();
            out.insert(key, (e.id, heads));
        }
        Ok(out)
    }

    fn compare(
        &mut self,
        reply: &mut Reply,
        collection: &str,
        path: &[u8],
        theirs: &Summary,
    ) -> Result<(), ReplicationError> {
        match theirs {
            Summary::Empty => self.push_all_under(reply, collection, path),
            Summary::Entries(entries) => self.compare_entries(reply, collection, path, entries),
            Summary::Branch(digests) => match self.store.merkle_node(collection, path)? {
                None => {
                    reply
                        .col(collection)
                        .nodes
                        .push((path.to_vec(), Summary::Empty));
                    Ok(())
                }
                Some(MerkleNode::Branch(children))
                    if children.iter().flatten().map(|c| c.count).sum::<u64>()
                        > self.config.entries_threshold =>
                {
                    for (i, (d, c)) in digests.iter().zip(children.iter()).enumerate() {
                        let mut child = path.to_vec();
                        child.push(i as u8);
                        match (d, c) {
                            (Some(d), Some(c)) if *d != digest_of(&c.cid) => {
                                let summary = self.own_summary(collection, &child)?;
                                reply.col(collection).nodes.push((child, summary));
                            }
                            (Some(_), None) => {
                                reply.col(collection).nodes.push((child, Summary::Empty));
                            }
                            (None, Some(_)) => self.push_all_under(reply, collection, &child)?,
                            _ => {}
                        }
                    }
                    Ok(())
                }
                Some(_) => {
                    let summary = self.own_summary(collection, path)?;
                    reply.col(collection).nodes.push((path.to_vec(), summary));
                    Ok(())
                }
            },
        }
    }

    fn compare_entries(
        &mut self,
        reply: &mut Reply,
        collection: &str,
        path: &[u8],
        theirs: &[EntrySummary],
    ) -> Result<(), ReplicationError> {
        let own = self.own_entries(collection, path)?;
        let theirs: BTreeMap<Short, &Option<Vec<Short>>> =
            theirs.iter().map(|e| (e.key, &e.heads)).collect();
        for key in theirs.keys() {
            if !own.contains_key(key) {
                reply.col(collection).needs.push(Need {
                    key: *key,
                    heads: Vec::new(),
                    tail: Vec::new(),
                });
            }
        }
        for (key, (id, own_heads)) in &own {
            let their_heads = match theirs.get(key) {
                None => {
                    self.push_doc(reply, collection, id, &[])?;
                    continue;
                }
                Some(h) => *h,
            };
            if their_heads.as_ref() == Some(own_heads) {
                continue;
            }
            let dag = DocDag::load(
                &self.store,
                self.store.heads(collection, id)?,
                self.config.max_history,
            )?;
            let known: Option<Vec<ContentId>> = their_heads
                .as_ref()
                .and_then(|hs| hs.iter().map(|h| dag.find(h).cloned()).collect());
            match known {
                Some(known) => self.push_missing(reply, &dag, &known)?,
                None => {
                    let (heads, tail) = (dag.short_heads(), dag.tail());
                    reply.col(collection).needs.push(Need {
                        key: *key,
                        heads,
                        tail,
                    });
                }
            }
        }
        Ok(())
    }

    /// Finds this side's document whose key starts with `key`.
    fn find_doc(&self, collection: &str, key: &Short) -> Result<Option<String>, ReplicationError> {
        let mut path = Vec::new();
        loop {
            match self.store.merkle_node(collection, &path)? {
                None => return Ok(None),
                Some(MerkleNode::Bucket(entries)) => {
                    return Ok(entries
                        .into_iter()
                        .find(|e| key_of(&e.key_hash) == *key)
                        .map(|e| e.id));
                }
                Some(MerkleNode::Branch(_)) => match nibble(key, path.len()) {
                    Some(n) => path.push(n),
                    None => {
                        // Deeper than the key reaches: search the subtree.
                        return Ok(entries_under(&self.store, collection, &path)?
                            .into_iter()
                            .find(|e| key_of(&e.key_hash) == *key && under(&e.key_hash, &path))
                            .map(|e| e.id));
                    }
                },
            }
        }
    }

    fn serve_need(
        &mut self,
        reply: &mut Reply,
        collection: &str,
        need: &Need,
    ) -> Result<(), ReplicationError> {
        let Some(id) = self.find_doc(collection, &need.key)? else {
            return Ok(());
        };
        let dag = DocDag::load(
            &self.store,
            self.store.heads(collection, &id)?,
            self.config.max_history,
        )?;
        let known: Vec<ContentId> = need
            .heads
            .iter()
            .chain(&need.tail)
            .filter_map(|s| dag.find(s).cloned())
            .collect();
        self.push_missing(reply, &dag, &known)?;
        if need.heads.iter().any(|h| dag.find(h).is_none()) {
            reply.col(collection).needs.push(Need {
                key: need.key,
                heads: dag.short_heads(),
                tail: Vec::new(),
            });
        }
        Ok(())
    }

    fn push_all_under(
        &mut self,
        reply: &mut Reply,
        collection: &str,
        path: &[u8],
    ) -> Result<(), ReplicationError> {
        for e in entries_under(&self.store, collection, path)? {
            self.push_doc(reply, collection, &e.id, &[])?;
        }
        Ok(())
    }

    fn push_doc(
        &mut self,
        reply: &mut Reply,
        collection: &str,
        id: &str,
        known: &[ContentId],
    ) -> Result<(), ReplicationError> {
        let dag = DocDag::load(
            &self.store,
            self.store.heads(collection, id)?,
            self.config.max_history,
        )?;
        self.push_missing(reply, &dag, known)
    }

    fn push_missing(
        &mut self,
        reply: &mut Reply,
        dag: &DocDag,
        known: &[ContentId],
    ) -> Result<(), ReplicationError> {
        for cid in dag.missing_above(known) {
            self.push_version(reply, &cid)?;
        }
        Ok(())
    }

    fn push_version(&mut self, reply: &mut Reply, cid: &ContentId) -> Result<(), ReplicationError> {
        if reply.pushed.contains(cid) {
            return Ok(());
        }
        if let Some(bytes) = self.store.version_bytes(cid)? {
            self.stats.versions_sent += 1;
            self.stats.version_bytes_sent += bytes.len() as u64;
            reply.pushed.insert(cid.clone());
            reply.pushes.push((cid.clone(), bytes));
        }
        Ok(())
    }
}
