//! The document CRDT: a map of fields with last-writer-wins values, counters and
//! sets, plus a deletion tombstone.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use ecomesh_types::{HlcTimestamp, Map, Value};

use crate::{Error, LwwRegister, Merge, OrSet, PnCounter};

/// What the winning write made a field.
///
/// Ordered `Absent < Value < Counter < Set` (then by value), which only matters
/// to break ties between two writes with identical timestamps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// The field was removed (a replacing `set` left it out, or [`FieldOp::Remove`]).
    Absent,
    /// A plain value.
    Value(Value),
    /// A counter: the field shows its [`Field::counter`] value.
    Counter,
    /// A set: the field shows its [`Field::set`] elements.
    Set,
}

/// One operation on one field, for [`DocumentCrdt::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum FieldOp {
    /// Writes a plain value (last writer wins).
    Set(Value),
    /// Removes the field (writes "absent", last writer wins).
    Remove,
    /// Adds to the field's counter (negative to subtract). If the field shows an
    /// integer, the counter starts from it.
    Increment(i64),
    /// Adds elements to the field's set. If the field shows an array, the set
    /// starts from its elements.
    AddToSet(Vec<Value>),
    /// Removes elements (as observed here) from the field's set. If the field
    /// shows an array, the set starts from its other elements.
    RemoveFromSet(Vec<Value>),
}

/// The replicated state of one field: the winning write (which decides what the
/// field is), the counter contents and the set contents.
///
/// All three parts merge independently (LWW, PN-Counter, OR-Set), so a field whose
/// kind changes concurrently on two replicas still converges: the latest write
/// decides which part is shown.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    write: Option<LwwRegister<Slot>>,
    counter: PnCounter,
    set: OrSet<Value>,
}

impl Field {
    fn bottom() -> Self {
        Field {
            write: None,
            counter: PnCounter::new(),
            set: OrSet::new(),
        }
    }

    /// Builds a field from its parts. A delta may carry only counter or set contents,
    /// so `write` is optional; fails with [`Error::InvalidParts`] when all three are empty.
    pub fn from_parts(
        write: Option<LwwRegister<Slot>>,
        counter: PnCounter,
        set: OrSet<Value>,
    ) -> Result<Self, Error> {
        let field = Field {
            write,
            counter,
            set,
        };
        if field.is_bottom() {
            return Err(Error::parts("Field", "all parts empty"));
        }
        Ok(field)
    }

    /// The winning write, if this state holds one.
    pub fn write(&self) -> Option<&LwwRegister<Slot>> {
        self.write.as_ref()
    }

    /// The counter contents (shown when the winning write is [`Slot::Counter`]).
    pub fn counter(&self) -> &PnCounter {
        &self.counter
    }

    /// The set contents (shown when the winning write is [`Slot::Set`]).
    pub fn set(&self) -> &OrSet<Value> {
        &self.set
    }

    /// The parts, taking ownership.
    pub fn into_parts(self) -> (Option<LwwRegister<Slot>>, PnCounter, OrSet<Value>) {
        (self.write, self.counter, self.set)
    }

    fn is_bottom(&self) -> bool {
        self.write.is_none() && self.counter.is_empty() && self.set.is_bottom()
    }

    /// The value shown, given the document's tombstone.
    fn shown(&self, deleted: Option<HlcTimestamp>) -> Option<Value> {
        let write = self.write.as_ref()?;
        if Some(write.timestamp()) <= deleted {
            return None;
        }
        match write.value() {
            Slot::Absent => None,
            Slot::Value(v) => Some(v.clone()),
            Slot::Counter => Some(Value::Integer(clamp_i64(self.counter.value()))),
            Slot::Set => Some(Value::Array(
                self.set
                    .entries()
                    .filter(|(_, live, _)| live.last().copied() > deleted)
                    .map(|(item, _, _)| item.clone())
                    .collect(),
            )),
        }
    }
}

impl Merge for Field {
    /// Merges the write (LWW), the counter and the set independently.
    fn merge(&mut self, other: &Self) {
        match (&mut self.write, &other.write) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => self.write = Some(theirs.clone()),
            (_, None) => {}
        }
        self.counter.merge(&other.counter);
        self.set.merge(&other.set);
    }
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// A delta: the part of a [`DocumentCrdt`] state that one operation changed.
///
/// It is a state of the same type, so it merges exactly like a full state:
/// applying deltas in any order, any number of times, gives the same result as
/// merging the full states they came from.
pub type DocumentDelta = DocumentCrdt;

/// The replicated state of one document.
///
/// # Fields
/// Each field is a [`Field`]: by default a last-writer-wins register of a
/// [`Value`] ([`FieldOp::Set`]); [`FieldOp::Increment`] makes it a PN-Counter
/// and [`FieldOp::AddToSet`] / [`FieldOp::RemoveFromSet`] an OR-Set of values.
/// The field shows whatever its latest write (by [`HlcTimestamp`]) made it.
/// Any write that makes a field something other than a counter resets the
/// counter contents this replica observed, and likewise for set contents, so a
/// field that becomes a counter again starts from zero (plus any concurrent,
/// unobserved contributions, which survive as in an OR-Set: "add wins").
///
/// # Field removal
/// [`DocumentCrdt::set`] replaces the document: every shown field missing from the
/// new map gets a write of [`Slot::Absent`] at the operation's timestamp, an
/// ordinary LWW write that a later write of that field beats. Fields written
/// concurrently that the replacing replica had not seen are not removed.
///
/// # Deletion
/// [`DocumentCrdt::delete`] records a tombstone: the greatest delete timestamp
/// `d` wins. **The rule: a delete at `d` hides every field whose winning write
/// has a timestamp `<= d`, whether the deleting replica saw that write or not;
/// a write with a timestamp `> d` is shown, and the document exists again when
/// its latest write (`set`, `update`, `apply`) is later than `d`.** So when a
/// delete and an update are concurrent, the one with the greater timestamp
/// wins: a later update resurrects the document showing only the fields written
/// after the delete, and a later delete hides all of the update's fields. Set
/// elements follow the same rule through their add tags (an element shows only if
/// it was added after `d`). A delete also resets the counter and set contents it
/// observed. Counter contributions carry no timestamp, so the one exception is a
/// counter contribution concurrent with the delete and not seen by it: it
/// survives, hidden, and counts again if the field is later resurrected as a
/// counter (as an OR-Set add survives a concurrent remove).
///
/// Every operation returns its [`DocumentDelta`] and leaves the state unchanged
/// when it fails. Timestamps passed to operations should come from the replica's
/// [`Hlc::send_after`](crate::Hlc::send_after) with this document's
/// [`max_timestamp`](DocumentCrdt::max_timestamp) as the floor (and the clock
/// fed with the `max_timestamp` of every state merged in), so they are unique
/// and later than anything the replica saw of the document; an older timestamp
/// still converges but may lose to writes it should have beaten.
///
/// # Wrong clocks
/// Merging is safe whatever the timestamps say, so no state is refused for its
/// timestamps and replicas converge however wrong their writers' clocks are.
/// What a wrong clock changes is who wins last-writer-wins conflicts: **a
/// device whose clock runs ahead wins LWW conflicts against concurrent writes
/// for as long as its lead lasts, and one whose clock runs behind loses them;
/// a write made after seeing a value always beats it**, because its timestamp
/// is issued above the document's `max_timestamp` (the floor) even when that
/// lies beyond the local clock's drift bound. The same holds for a delete
/// after seeing the writes it hides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DocumentCrdt {
    fields: BTreeMap<String, Field>,
    written: Option<HlcTimestamp>,
    deleted: Option<HlcTimestamp>,
}

impl DocumentCrdt {
    /// The empty state: a document that was never written.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a state from its parts: fields (any order), the latest write
    /// timestamp and the tombstone.
    ///
    /// Fails with [`Error::InvalidParts`] on an empty or repeated field name.
    pub fn from_parts(
        fields: impl IntoIterator<Item = (String, Field)>,
        written: Option<HlcTimestamp>,
        deleted: Option<HlcTimestamp>,
    ) -> Result<Self, Error> {
        let mut map = BTreeMap::new();
        for (name, field) in fields {
            if name.is_empty() {
                return Err(Error::parts("DocumentCrdt", "empty field name"));
            }
            match map.entry(name) {
                Entry::Occupied(_) => return Err(Error::parts("DocumentCrdt", "repeated field")),
                Entry::Vacant(v) => {
                    v.insert(field);
                }
            }
        }
        Ok(DocumentCrdt {
            fields: map,
            written,
            deleted,
        })
    }

    /// Every field with state, shown or not, sorted by name.
    pub fn fields(&self) -> &BTreeMap<String, Field> {
        &self.fields
    }

    /// The timestamp of the latest `set`/`update`/`apply` (None if never written).
    pub fn written(&self) -> Option<HlcTimestamp> {
        self.written
    }

    /// The tombstone: the timestamp of the latest delete (None if never deleted).
    pub fn deleted(&self) -> Option<HlcTimestamp> {
        self.deleted
    }

    /// The parts: fields, latest write timestamp, tombstone.
    pub fn into_parts(
        self,
    ) -> (
        BTreeMap<String, Field>,
        Option<HlcTimestamp>,
        Option<HlcTimestamp>,
    ) {
        (self.fields, self.written, self.deleted)
    }

    /// True when the state holds nothing (an empty delta).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.written.is_none() && self.deleted.is_none()
    }

    /// Whether the document exists: it was written after its latest delete.
    pub fn exists(&self) -> bool {
        self.written > self.deleted
    }

    /// The document's fields as a reader sees them, or `None` if it does not exist.
    ///
    /// Counters show as `Value::Integer` (clamped to the `i64` range), sets as a
    /// sorted `Value::Array` without duplicates of the elements added after the tombstone.
    pub fn materialize(&self) -> Option<Map> {
        if !self.exists() {
            return None;
        }
        Some(
            self.fields
                .iter()
                .filter_map(|(name, f)| f.shown(self.deleted).map(|v| (name.clone(), v)))
                .collect(),
        )
    }

    /// The value one field shows (`None` if absent, hidden, or the document does not exist).
    pub fn get(&self, name: &str) -> Option<Value> {
        if !self.exists() {
            return None;
        }
        self.fields.get(name)?.shown(self.deleted)
    }

    /// The greatest timestamp anywhere in the state (writes, tombstone, set tags).
    ///
    /// Feed it to the replica's [`Hlc::receive`](crate::Hlc::receive) after merging
    /// a remote state so the next local timestamp is later than everything seen.
    pub fn max_timestamp(&self) -> Option<HlcTimestamp> {
        let mut max = self.written.max(self.deleted);
        for field in self.fields.values() {
            max = max.max(field.write.as_ref().map(LwwRegister::timestamp));
            for (_, live, removed) in field.set.entries() {
                max = max.max(live.last().copied()).max(removed.last().copied());
            }
        }
        max
    }

    /// Writes `partial`'s fields as plain values at `ts`, leaving other fields alone
    /// (Firestore `update`, or `set` with merge). Returns the delta.
    pub fn update(&mut self, partial: Map, ts: HlcTimestamp) -> Result<DocumentDelta, Error> {
        self.apply(partial.into_iter().map(|(k, v)| (k, FieldOp::Set(v))), ts)
    }

    /// Replaces the document with `fields` at `ts` (Firestore `set` without merge):
    /// the given fields are written, every other shown field is removed. Returns the delta.
    pub fn set(&mut self, fields: Map, ts: HlcTimestamp) -> Result<DocumentDelta, Error> {
        let removed: Vec<(String, FieldOp)> = self
            .fields
            .iter()
            .filter(|(name, f)| {
                !fields.contains_key(*name)
                    && (f.shown(self.deleted).is_some()
                        || f.counter.value() != 0
                        || !f.set.is_empty())
            })
            .map(|(name, _)| (name.clone(), FieldOp::Remove))
            .collect();
        let ops = fields
            .into_iter()
            .map(|(k, v)| (k, FieldOp::Set(v)))
            .chain(removed);
        self.apply(ops, ts)
    }

    /// Applies field operations at `ts`, all with the same timestamp, and returns the delta.
    ///
    /// Fails with [`Error::InvalidOperation`] on an empty field name or a field named
    /// twice, and with [`Error::CounterOverflow`] when a counter total would overflow;
    /// the state is then unchanged.
    pub fn apply(
        &mut self,
        ops: impl IntoIterator<Item = (String, FieldOp)>,
        ts: HlcTimestamp,
    ) -> Result<DocumentDelta, Error> {
        let mut delta = DocumentCrdt {
            fields: BTreeMap::new(),
            written: Some(ts),
            deleted: None,
        };
        for (name, op) in ops {
            if name.is_empty() {
                return Err(Error::InvalidOperation("empty field name".into()));
            }
            if delta.fields.contains_key(&name) {
                return Err(Error::InvalidOperation(format!(
                    "field {name:?} named twice"
                )));
            }
            let field_delta = self.field_delta(&name, op, ts)?;
            delta.fields.insert(name, field_delta);
        }
        self.merge(&delta);
        Ok(delta)
    }

    /// Deletes the document at `ts` (see the type's deletion rule) and returns the delta.
    ///
    /// Fails with [`Error::CounterOverflow`] (state unchanged) when resetting a
    /// counter would overflow.
    pub fn delete(&mut self, ts: HlcTimestamp) -> Result<DocumentDelta, Error> {
        let mut delta = DocumentCrdt {
            fields: BTreeMap::new(),
            written: None,
            deleted: Some(ts),
        };
        for (name, field) in &self.fields {
            let reset = Self::reset_delta(field, ts, true, true)?;
            if !reset.is_bottom() {
                delta.fields.insert(name.clone(), reset);
            }
        }
        self.merge(&delta);
        Ok(delta)
    }

    /// The observed reset of a field's counter and/or set contents, by `ts.peer`.
    fn reset_delta(
        field: &Field,
        ts: HlcTimestamp,
        counter: bool,
        set: bool,
    ) -> Result<Field, Error> {
        let mut delta = Field::bottom();
        if counter && field.counter.value() != 0 {
            delta.counter = field
                .counter
                .add_wide_delta(ts.peer, -field.counter.value())?;
        }
        if set {
            delta.set = field.set.clear_delta();
        }
        Ok(delta)
    }

    fn field_delta(&self, name: &str, op: FieldOp, ts: HlcTimestamp) -> Result<Field, Error> {
        let empty = Field::bottom();
        let current = self.fields.get(name).unwrap_or(&empty);
        let shown = current.shown(self.deleted);
        let (slot, reset_counter, reset_set) = match &op {
            FieldOp::Set(v) => (Slot::Value(v.clone()), true, true),
            FieldOp::Remove => (Slot::Absent, true, true),
            FieldOp::Increment(_) => (Slot::Counter, false, true),
            FieldOp::AddToSet(_) | FieldOp::RemoveFromSet(_) => (Slot::Set, true, false),
        };
        let mut delta = Self::reset_delta(current, ts, reset_counter, reset_set)?;
        delta.write = Some(LwwRegister::new(slot, ts));
        // A plain value shown now may seed the new counter or set.
        let plain = match (&shown, current.write.as_ref().map(LwwRegister::value)) {
            (Some(v), Some(Slot::Value(_))) => Some(v),
            _ => None,
        };
        match op {
            FieldOp::Set(_) | FieldOp::Remove => {}
            FieldOp::Increment(n) => {
                let seed = match plain {
                    Some(Value::Integer(i)) => i128::from(*i),
                    _ => 0,
                };
                delta.counter = current
                    .counter
                    .add_wide_delta(ts.peer, seed + i128::from(n))?;
            }
            FieldOp::AddToSet(items) => {
                let seed = match plain {
                    Some(Value::Array(seed)) => seed.as_slice(),
                    _ => &[],
                };
                for item in seed.iter().cloned().chain(items) {
                    delta.set.merge(&current.set.add_delta(item, ts));
                }
            }
            FieldOp::RemoveFromSet(items) => {
                let gone: BTreeSet<&Value> = items.iter().collect();
                if let Some(Value::Array(seed)) = plain {
                    for item in seed.iter().filter(|v| !gone.contains(v)) {
                        delta.set.merge(&current.set.add_delta(item.clone(), ts));
                    }
                }
                for item in &items {
                    delta.set.merge(&current.set.remove_delta(item));
                }
            }
        }
        Ok(delta)
    }
}

impl Merge for DocumentCrdt {
    /// Merges field by field, and takes the later of the write timestamps and of the tombstones.
    fn merge(&mut self, other: &Self) {
        for (name, field) in &other.fields {
            match self.fields.get_mut(name) {
                Some(mine) => mine.merge(field),
                None => {
                    self.fields.insert(name.clone(), field.clone());
                }
            }
        }
        self.written = self.written.max(other.written);
        self.deleted = self.deleted.max(other.deleted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_types::PeerId;

    fn ts(ms: u64, p: u8) -> HlcTimestamp {
        HlcTimestamp::new(ms, 0, PeerId::from_digest([p; 32]))
    }

    fn map(pairs: &[(&str, Value)]) -> Map {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn update_set_and_materialize() {
        let mut doc = DocumentCrdt::new();
        assert_eq!(doc.materialize(), None);
        doc.update(map(&[("a", 1.into()), ("b", "x".into())]), ts(1, 1))
            .unwrap();
        doc.update(map(&[("b", "y".into())]), ts(2, 1)).unwrap();
        assert_eq!(
            doc.materialize(),
            Some(map(&[("a", 1.into()), ("b", "y".into())]))
        );
        // Replace: "a" becomes absent.
        doc.set(map(&[("c", true.into())]), ts(3, 1)).unwrap();
        assert_eq!(doc.materialize(), Some(map(&[("c", true.into())])));
        assert_eq!(
            doc.fields()["a"].write().map(|w| w.value().clone()),
            Some(Slot::Absent)
        );
        // An older write of "a" loses to the removal; a newer one brings it back.
        doc.update(map(&[("a", 5.into())]), ts(2, 9)).unwrap();
        assert_eq!(doc.get("a"), None);
        doc.update(map(&[("a", 6.into())]), ts(4, 1)).unwrap();
        assert_eq!(doc.get("a"), Some(6.into()));
    }

    #[test]
    fn counters_and_sets_start_from_shown_values() {
        let mut doc = DocumentCrdt::new();
        doc.update(
            map(&[
                ("n", 10.into()),
                ("tags", Value::Array(vec!["a".into(), "b".into()])),
            ]),
            ts(1, 1),
        )
        .unwrap();
        doc.apply(
            [
                ("n".to_owned(), FieldOp::Increment(-3)),
                ("tags".to_owned(), FieldOp::RemoveFromSet(vec!["a".into()])),
            ],
            ts(2, 1),
        )
        .unwrap();
        assert_eq!(doc.get("n"), Some(7.into()));
        assert_eq!(doc.get("tags"), Some(Value::Array(vec!["b".into()])));
        doc.apply(
            [(
                "tags".to_owned(),
                FieldOp::AddToSet(vec!["c".into(), "b".into()]),
            )],
            ts(3, 1),
        )
        .unwrap();
        assert_eq!(
            doc.get("tags"),
            Some(Value::Array(vec!["b".into(), "c".into()]))
        );
        // Overwriting the counter with a value and incrementing again starts from it.
        doc.update(map(&[("n", Value::Null)]), ts(4, 1)).unwrap();
        doc.apply([("n".to_owned(), FieldOp::Increment(1))], ts(5, 1))
            .unwrap();
        assert_eq!(doc.get("n"), Some(1.into()));
    }

    #[test]
    fn concurrent_counter_increments_add_up() {
        let mut a = DocumentCrdt::new();
        let d0 = a
            .apply([("n".to_owned(), FieldOp::Increment(1))], ts(1, 1))
            .unwrap();
        let mut b = DocumentCrdt::new();
        b.merge(&d0);
        let da = a
            .apply([("n".to_owned(), FieldOp::Increment(2))], ts(2, 1))
            .unwrap();
        let db = b
            .apply([("n".to_owned(), FieldOp::Increment(5))], ts(2, 2))
            .unwrap();
        a.merge(&db);
        b.merge(&da);
        assert_eq!(a, b);
        assert_eq!(a.get("n"), Some(8.into()));
    }

    #[test]
    fn later_delete_hides_concurrent_earlier_update() {
        let mut a = DocumentCrdt::new();
        let create = a.update(map(&[("x", 1.into())]), ts(1, 1)).unwrap();
        let mut b = DocumentCrdt::new();
        b.merge(&create);
        // Concurrent: A updates at 5, B deletes at 6 without having seen it.
        let upd = a
            .update(map(&[("x", 2.into()), ("y", 3.into())]), ts(5, 1))
            .unwrap();
        let del = b.delete(ts(6, 2)).unwrap();
        a.merge(&del);
        b.merge(&upd);
        assert_eq!(a, b);
        assert!(!a.exists());
        assert_eq!(a.materialize(), None);
    }

    #[test]
    fn later_update_resurrects_with_only_later_fields() {
        let mut a = DocumentCrdt::new();
        let create = a
            .update(map(&[("x", 1.into()), ("keep", 0.into())]), ts(1, 1))
            .unwrap();
        let mut b = DocumentCrdt::new();
        b.merge(&create);
        let del = b.delete(ts(5, 2)).unwrap();
        let upd = a.update(map(&[("y", 3.into())]), ts(6, 1)).unwrap();
        a.merge(&del);
        b.merge(&upd);
        assert_eq!(a, b);
        assert!(a.exists());
        assert_eq!(a.materialize(), Some(map(&[("y", 3.into())])));
    }

    #[test]
    fn delete_resets_observed_counter_and_set_contents() {
        let mut doc = DocumentCrdt::new();
        doc.apply(
            [
                ("n".to_owned(), FieldOp::Increment(4)),
                ("s".to_owned(), FieldOp::AddToSet(vec![1.into()])),
            ],
            ts(1, 1),
        )
        .unwrap();
        doc.delete(ts(2, 1)).unwrap();
        doc.apply(
            [
                ("n".to_owned(), FieldOp::Increment(1)),
                ("s".to_owned(), FieldOp::AddToSet(vec![2.into()])),
            ],
            ts(3, 1),
        )
        .unwrap();
        assert_eq!(
            doc.materialize(),
            Some(map(&[("n", 1.into()), ("s", Value::Array(vec![2.into()]))]))
        );
        assert_eq!(doc.max_timestamp(), Some(ts(3, 1)));
    }

    #[test]
    fn unobserved_concurrent_contents_across_a_delete() {
        let mut a = DocumentCrdt::new();
        let create = a
            .apply(
                [
                    ("n".to_owned(), FieldOp::Increment(1)),
                    ("s".to_owned(), FieldOp::AddToSet(vec![1.into()])),
                ],
                ts(1, 1),
            )
            .unwrap();
        let mut b = DocumentCrdt::new();
        b.merge(&create);
        // A adds at 3 while B deletes at 4 without seeing it.
        let add = a
            .apply(
                [
                    ("n".to_owned(), FieldOp::Increment(10)),
                    ("s".to_owned(), FieldOp::AddToSet(vec![2.into()])),
                ],
                ts(3, 1),
            )
            .unwrap();
        let del = b.delete(ts(4, 2)).unwrap();
        a.merge(&del);
        b.merge(&add);
        assert_eq!(a, b);
        assert!(!a.exists());
        // Resurrect both fields at 5: the set element added at 3 stays hidden,
        // the unobserved counter contribution of 10 counts again.
        let again = a
            .apply(
                [
                    ("n".to_owned(), FieldOp::Increment(100)),
                    ("s".to_owned(), FieldOp::AddToSet(vec![3.into()])),
                ],
                ts(5, 1),
            )
            .unwrap();
        b.merge(&again);
        assert_eq!(a, b);
        assert_eq!(
            a.materialize(),
            Some(map(&[
                ("n", 110.into()),
                ("s", Value::Array(vec![3.into()]))
            ]))
        );
    }

    #[test]
    fn invalid_operations_leave_state_unchanged() {
        let mut doc = DocumentCrdt::new();
        doc.update(map(&[("a", 1.into())]), ts(1, 1)).unwrap();
        let before = doc.clone();
        let twice = [
            ("b".to_owned(), FieldOp::Set(1.into())),
            ("b".to_owned(), FieldOp::Remove),
        ];
        assert!(matches!(
            doc.apply(twice, ts(2, 1)),
            Err(Error::InvalidOperation(_))
        ));
        assert!(
            doc.apply([(String::new(), FieldOp::Remove)], ts(2, 1))
                .is_err()
        );
        let full = PnCounter::from_parts([(PeerId::from_digest([1; 32]), u64::MAX)], []).unwrap();
        let mut big = DocumentCrdt::from_parts(
            [(
                "n".to_owned(),
                Field::from_parts(
                    Some(LwwRegister::new(Slot::Counter, ts(1, 1))),
                    full,
                    OrSet::new(),
                )
                .unwrap(),
            )],
            Some(ts(1, 1)),
            None,
        )
        .unwrap();
        let big_before = big.clone();
        assert_eq!(
            big.apply([("n".to_owned(), FieldOp::Increment(1))], ts(2, 1)),
            Err(Error::CounterOverflow)
        );
        assert_eq!(big, big_before);
        assert_eq!(doc, before);
    }

    #[test]
    fn parts_round_trip_and_validation() {
        let mut doc = DocumentCrdt::new();
        doc.apply(
            [
                ("n".to_owned(), FieldOp::Increment(4)),
                ("s".to_owned(), FieldOp::AddToSet(vec![1.into()])),
                ("v".to_owned(), FieldOp::Set("x".into())),
            ],
            ts(1, 1),
        )
        .unwrap();
        doc.delete(ts(2, 1)).unwrap();
        let (fields, written, deleted) = doc.clone().into_parts();
        let fields: Vec<(String, Field)> = fields
            .into_iter()
            .map(|(k, f)| {
                let (w, c, s) = f.into_parts();
                (k, Field::from_parts(w, c, s).unwrap())
            })
            .collect();
        assert_eq!(
            DocumentCrdt::from_parts(fields, written, deleted).unwrap(),
            doc
        );
        assert!(Field::from_parts(None, PnCounter::new(), OrSet::new()).is_err());
        let f = Field::from_parts(
            Some(LwwRegister::new(Slot::Absent, ts(1, 1))),
            PnCounter::new(),
            OrSet::new(),
        )
        .unwrap();
        assert!(DocumentCrdt::from_parts([(String::new(), f.clone())], None, None).is_err());
        assert!(
            DocumentCrdt::from_parts(
                [("a".to_owned(), f.clone()), ("a".to_owned(), f)],
                None,
                None
            )
            .is_err()
        );
    }
}
