//! The storage abstraction (seed 6): [`StorageAdapter`] and the document model it stores.

use crate::{
    BoxFuture, ContentId, Error, HlcTimestamp, Listener, Map, Query, QueryPage, Subscription,
};

/// A document: its address and its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Document {
    /// The collection it belongs to.
    pub collection: String,
    /// Its id, unique within the collection.
    pub id: String,
    /// Its fields.
    pub fields: Map,
}

impl Document {
    /// Builds a document.
    pub fn new(collection: impl Into<String>, id: impl Into<String>, fields: Map) -> Self {
        Document {
            collection: collection.into(),
            id: id.into(),
            fields,
        }
    }
}

/// Options of [`StorageAdapter::set`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetOptions {
    /// Merge the given fields into an existing document instead of replacing it.
    pub merge: bool,
}

impl SetOptions {
    /// Replace the whole document (the default).
    pub const REPLACE: SetOptions = SetOptions { merge: false };
    /// Merge into an existing document.
    pub const MERGE: SetOptions = SetOptions { merge: true };
}

/// What a successful write produced.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WriteResult {
    /// The content id of the version node the write created, for stores that keep history.
    pub version: Option<ContentId>,
    /// The write's hybrid-logical-clock time, for stores that keep one.
    pub timestamp: Option<HlcTimestamp>,
}

impl WriteResult {
    /// A result with the given version and time.
    pub fn new(version: Option<ContentId>, timestamp: Option<HlcTimestamp>) -> Self {
        WriteResult { version, timestamp }
    }
}

/// One write of a [`StorageAdapter::batch_write`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum BatchOperation {
    /// Like [`StorageAdapter::set`].
    Set {
        /// Target collection.
        collection: String,
        /// Target document id.
        id: String,
        /// Fields to write.
        fields: Map,
        /// Merge into the existing document instead of replacing it.
        merge: bool,
    },
    /// Like [`StorageAdapter::update`]: the document must exist.
    Update {
        /// Target collection.
        collection: String,
        /// Target document id.
        id: String,
        /// Fields to change.
        fields: Map,
    },
    /// Like [`StorageAdapter::delete`].
    Delete {
        /// Target collection.
        collection: String,
        /// Target document id.
        id: String,
    },
}

impl BatchOperation {
    /// The (collection, id) the operation writes.
    pub fn target(&self) -> (&str, &str) {
        match self {
            BatchOperation::Set { collection, id, .. }
            | BatchOperation::Update { collection, id, .. }
            | BatchOperation::Delete { collection, id } => (collection, id),
        }
    }
}

/// The outcome of an atomic batch: one result per operation, in order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BatchResult {
    /// One entry per operation, in the order given.
    pub results: Vec<WriteResult>,
}

impl BatchResult {
    /// Wraps the per-operation results.
    pub fn new(results: Vec<WriteResult>) -> Self {
        BatchResult { results }
    }
}

/// A document store (seed 6), local or networked. Object-safe.
///
/// Implementations promise:
/// - `set` replaces (or with [`SetOptions::merge`] merges into) the document;
///   `update` merges into an existing document and is [`Error::NotFound`] otherwise;
///   `delete` of a missing document succeeds.
/// - `query` returns exactly what [`Query::execute`] returns over the
///   collection's documents (the reference semantics), whatever indexes it uses.
/// - `batch_write` applies all operations or none.
/// - A document subscription is called with the current state (`None` when
///   absent) at once, then after every change, in commit order, never twice for
///   one change; a query subscription likewise with the full result list.
///   Listeners run on the store's thread: they must not block.
/// - Collection names and ids are non-empty; an empty one is [`Error::InvalidArgument`].
pub trait StorageAdapter: Send + Sync {
    /// Reads a document.
    fn get<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, Error>>;

    /// Writes a document, replacing it or merging into it.
    fn set<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
        options: SetOptions,
    ) -> BoxFuture<'a, Result<WriteResult, Error>>;

    /// Changes some fields of an existing document.
    fn update<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
    ) -> BoxFuture<'a, Result<WriteResult, Error>>;

    /// Deletes a document.
    fn delete<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, Error>>;

    /// Runs a query over one collection.
    fn query<'a>(
        &'a self,
        collection: &'a str,
        query: &'a Query,
    ) -> BoxFuture<'a, Result<QueryPage, Error>>;

    /// Applies several writes atomically.
    fn batch_write(
        &self,
        operations: Vec<BatchOperation>,
    ) -> BoxFuture<'_, Result<BatchResult, Error>>;

    /// Watches one document.
    fn subscribe_document(
        &self,
        collection: &str,
        id: &str,
        listener: Listener<Option<Document>>,
    ) -> Result<Subscription, Error>;

    /// Watches the results of a query.
    fn subscribe_query(
        &self,
        collection: &str,
        query: Query,
        listener: Listener<Vec<Document>>,
    ) -> Result<Subscription, Error>;

    /// The current time of the store's hybrid logical clock.
    fn server_timestamp(&self) -> HlcTimestamp;

    /// A new document id, unique without coordination.
    fn generate_id(&self, collection: &str) -> String;
}

/// Checks a collection name and document id: both non-empty and free of NUL.
pub fn validate_key(collection: &str, id: &str) -> Result<(), Error> {
    if collection.is_empty() || id.is_empty() {
        return Err(Error::InvalidArgument(
            "collection and id must be non-empty".into(),
        ));
    }
    if collection.contains('\0') || id.contains('\0') {
        return Err(Error::InvalidArgument(
            "collection and id must not contain NUL".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trait_is_object_safe() {
        fn _takes(_: std::sync::Arc<dyn StorageAdapter>) {}
    }

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("users", "u1").is_ok());
        assert!(matches!(
            validate_key("", "u1"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            validate_key("users", ""),
            Err(Error::InvalidArgument(_))
        ));
        assert!(validate_key("us\0ers", "x").is_err());
    }
}
