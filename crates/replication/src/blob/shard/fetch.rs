//! The fetching side: gets the pieces of one blob from their holders.

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_types::PeerId;

use crate::ReplicationError;
use crate::blob::{BlobId, Manifest, rebuild_verified_owned};

use super::{Result, ShardLimits, ShardRequest, ShardResponse};

/// Identifies one request a [`Fetcher`] emitted; the driver hands it back with
/// the response (or the failure) of that request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A request to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Hand this back to [`Fetcher::on_response`] or [`Fetcher::on_failure`].
    pub id: RequestId,
    /// Who to send it to.
    pub peer: PeerId,
    /// The index of the piece in the manifest.
    pub piece: usize,
    /// The request (always a `Get`).
    pub request: ShardRequest,
}

/// What the driver should do next.
#[derive(Debug)]
pub enum FetchPoll {
    /// Send these requests (and keep waiting for the ones already out).
    Send(Vec<Outgoing>),
    /// Nothing new to send; wait for responses or failures.
    Wait,
    /// The blob, rebuilt and verified against its id. Returned once.
    Done(Vec<u8>),
    /// Enough pieces were verified and handed to the driver (the fetcher was
    /// made with [`FetchConfig::keep_pieces`] false, so it holds none of
    /// them): the driver rebuilds the blob from where it put them and checks
    /// it against the blob id. Returned once.
    Fetched,
    /// Not enough pieces can be had from the known holders. Returned once.
    Failed(ReplicationError),
    /// `Done` or `Failed` was already returned.
    Finished,
}

/// How a [`Fetcher`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchConfig {
    /// Most requests out at once. Default 4.
    pub max_in_flight: usize,
    /// Bounds on response frames.
    pub limits: ShardLimits,
    /// Whether verified pieces are kept until the blob is rebuilt (default
    /// true: [`FetchPoll::Done`] carries the blob). False: each verified
    /// piece is only handed to the callback of
    /// [`Fetcher::on_response_with`], the fetcher holds at most the frames
    /// it is handed (memory bounded by `max_in_flight` pieces, not by the
    /// blob), and the end is [`FetchPoll::Fetched`].
    pub keep_pieces: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_in_flight: 4,
            limits: ShardLimits::default(),
            keep_pieces: true,
        }
    }
}

#[derive(Debug, Default)]
struct Piece {
    /// Known holders, in order of preference.
    holders: Vec<PeerId>,
    /// Holders already asked (answered, failed or still out).
    tried: BTreeSet<PeerId>,
    in_flight: bool,
}

#[derive(Debug)]
enum State {
    Running,
    Done(Vec<u8>),
    Fetched,
    Failed(ReplicationError),
    Finished,
}

/// Sans-io state machine that fetches the pieces of one blob and rebuilds it.
///
/// Each piece is asked of one holder at a time, never twice of the same
/// holder; a `NotFound`, an `Error`, a failure, garbage or bytes that do not
/// hash to the piece id move on to the next untried holder. Requests go to
/// the pieces in manifest order (for `rs-4-7` the data shards first, which
/// rebuild without decoding), only as many as are still needed, and to the
/// untried holder with the fewest requests out (so load spreads over distinct
/// holders). As soon as enough verified pieces are in (all of them, or any 4
/// of 7 shards) the blob is rebuilt, checked against its id and returned by
/// [`Fetcher::poll`]; once the known holders cannot supply enough pieces,
/// `poll` returns [`FetchPoll::Failed`]. No clock is read: the driver reports
/// timeouts through [`Fetcher::on_failure`].
#[derive(Debug)]
pub struct Fetcher {
    manifest: Manifest,
    config: FetchConfig,
    pieces: Vec<Piece>,
    have: BTreeMap<usize, Vec<u8>>,
    out: BTreeMap<RequestId, (usize, PeerId)>,
    next_id: u64,
    state: State,
}

impl Fetcher {
    /// A fetcher for `manifest`; `holders[i]` are the peers believed to hold
    /// piece `i`, in order of preference (there must be one list per piece).
    pub fn new(manifest: Manifest, holders: Vec<Vec<PeerId>>, config: FetchConfig) -> Result<Self> {
        if holders.len() != manifest.pieces().len() {
            return Err(ReplicationError::InvalidConfig(format!(
                "{} holder lists for {} pieces",
                holders.len(),
                manifest.pieces().len()
            )));
        }
        if config.max_in_flight == 0 {
            return Err(ReplicationError::InvalidConfig(
                "max_in_flight must be at least 1".to_owned(),
            ));
        }
        let pieces = holders
            .into_iter()
            .map(|mut h| {
                let mut seen = BTreeSet::new();
                h.retain(|p| seen.insert(*p));
                Piece {
                    holders: h,
                    ..Piece::default()
                }
            })
            .collect();
        Ok(Fetcher {
            manifest,
            config,
            pieces,
            have: BTreeMap::new(),
            out: BTreeMap::new(),
            next_id: 0,
            state: State::Running,
        })
    }

    /// The manifest being fetched.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// How many verified pieces are in (they are released, and this is 0,
    /// once the blob is built or handed over).
    pub fn pieces_verified(&self) -> usize {
        self.have.len()
    }

    /// Learns that `peer` holds piece `index` too (for example from a new
    /// content-location record); ignored for unknown pieces and known holders.
    pub fn add_holder(&mut self, index: usize, peer: PeerId) {
        if let Some(p) = self.pieces.get_mut(index)
            && !p.holders.contains(&peer)
        {
            p.holders.push(peer);
        }
    }

    /// What to do next: requests to send, wait, or the result.
    pub fn poll(&mut self) -> FetchPoll {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Done(blob) => return FetchPoll::Done(blob),
            State::Fetched => return FetchPoll::Fetched,
            State::Failed(e) => return FetchPoll::Failed(e),
            State::Finished => return FetchPoll::Finished,
            State::Running => self.state = State::Running,
        }
        let needed = self.manifest.pieces_needed();
        if self.have.len() >= needed {
            self.complete();
            return self.poll();
        }
        let mut send = Vec::new();
        for index in 0..self.pieces.len() {
            if self.out.len() >= self.config.max_in_flight
                || self.have.len() + self.out.len() >= needed
            {
                break;
            }
            if self.have.contains_key(&index) || self.pieces[index].in_flight {
                continue;
            }
            if let Some(peer) = self.pick_holder(index) {
                send.push(self.request(index, peer));
            }
        }
        if send.is_empty() && self.out.is_empty() {
            // Nothing out and nothing more to ask: not enough pieces exist.
            self.state = State::Finished;
            return FetchPoll::Failed(ReplicationError::Unrecoverable {
                what: self.manifest.id().to_text(),
                detail: format!(
                    "{} of {} pieces verified and no untried holders left; {needed} needed",
                    self.have.len(),
                    self.pieces.len()
                ),
            });
        }
        if send.is_empty() {
            FetchPoll::Wait
        } else {
            FetchPoll::Send(send)
        }
    }

    /// The untried holder of piece `index` with the fewest requests out.
    fn pick_holder(&self, index: usize) -> Option<PeerId> {
        let piece = &self.pieces[index];
        piece
            .holders
            .iter()
            .filter(|p| !piece.tried.contains(p))
            .enumerate()
            .min_by_key(|(rank, p)| (self.out.values().filter(|(_, q)| q == *p).count(), *rank))
            .map(|(_, p)| *p)
    }

    fn request(&mut self, index: usize, peer: PeerId) -> Outgoing {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let piece = &mut self.pieces[index];
        piece.tried.insert(peer);
        piece.in_flight = true;
        self.out.insert(id, (index, peer));
        Outgoing {
            id,
            peer,
            piece: index,
            request: ShardRequest::Get {
                id: self.piece_id(index),
            },
        }
    }

    fn piece_id(&self, index: usize) -> BlobId {
        self.manifest.pieces()[index]
    }

    /// Rebuilds from the verified pieces; the result waits for `poll`.
    fn complete(&mut self) {
        self.out.clear();
        if !self.config.keep_pieces {
            self.have.clear();
            self.state = State::Fetched;
            return;
        }
        // The pieces are released once the blob is built.
        let pieces = std::mem::take(&mut self.have);
        self.state = match rebuild_verified_owned(&self.manifest, pieces) {
            Ok(blob) => State::Done(blob),
            Err(e) => State::Failed(e),
        };
    }

    /// Takes the response frame of request `id`. Returns the peer's fault when
    /// the frame was garbage, carried more bytes than the piece has in the
    /// manifest ([`ReplicationError::TooLarge`], refused from the length
    /// head), was an answer that does not fit a `Get`, or carried bytes that
    /// do not match the piece id ([`ReplicationError::HashMismatch`] naming
    /// the peer); the piece is then asked of another holder. Responses to
    /// unknown or finished requests are ignored.
    pub fn on_response(&mut self, id: RequestId, frame: &[u8]) -> Result<()> {
        self.on_response_with(id, frame, |_, _| {})
    }

    /// [`on_response`](Self::on_response), handing each piece that matched
    /// its id to `verified` (with that id) before it is kept: a driver caches
    /// the piece from there without decoding the frame or hashing the bytes
    /// again. `verified` is called at most once, and only for verified bytes.
    pub fn on_response_with(
        &mut self,
        id: RequestId,
        frame: &[u8],
        verified: impl FnOnce(BlobId, &[u8]),
    ) -> Result<()> {
        let Some((index, peer)) = self.out.remove(&id) else {
            return Ok(());
        };
        self.pieces[index].in_flight = false;
        if !matches!(self.state, State::Running) || self.have.contains_key(&index) {
            return Ok(());
        }
        // A piece larger than its manifest size is refused by its length head.
        let expected = self.manifest.piece_size(index).unwrap_or(0);
        let limits = ShardLimits {
            max_shard: usize::try_from(expected)
                .unwrap_or(usize::MAX)
                .min(self.config.limits.max_shard),
            ..self.config.limits
        };
        let response = ShardResponse::decode_with(frame, &limits)?;
        match response {
            ShardResponse::Data(data) => {
                let piece_id = self.piece_id(index);
                if self.manifest.piece_size(index) != Some(data.len() as u64)
                    || !piece_id.matches(&data)
                {
                    return Err(ReplicationError::HashMismatch {
                        expected: piece_id.to_text(),
                        peer: Some(peer),
                    });
                }
                verified(piece_id, &data);
                // Without keep_pieces only the index is remembered.
                let kept = if self.config.keep_pieces {
                    data
                } else {
                    Vec::new()
                };
                self.have.insert(index, kept);
                if self.have.len() >= self.manifest.pieces_needed() {
                    self.complete();
                }
                Ok(())
            }
            ShardResponse::NotFound | ShardResponse::Error(_) => Ok(()),
            ShardResponse::Have(_) | ShardResponse::PushAck => Err(ReplicationError::Malformed {
                what: "shard response",
                detail: format!("peer {peer} answered a Get with something other than data"),
            }),
        }
    }

    /// Request `id` got no answer (timeout, disconnect); its piece is asked
    /// of another holder.
    pub fn on_failure(&mut self, id: RequestId) {
        if let Some((index, _)) = self.out.remove(&id) {
            self.pieces[index].in_flight = false;
        }
    }
}
