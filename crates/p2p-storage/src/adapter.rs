//! [`StorageAdapter`] for the store.
//!
//! The store's operations are synchronous and short (sled reads and writes;
//! with [`FlushPolicy::EveryWrite`](crate::FlushPolicy) a write also waits for
//! an fsync), so each future completes on its first poll. Callers on an async
//! runtime that cannot afford an fsync on an executor thread should choose an
//! interval flush policy or move writes to a blocking pool.

use ecomesh_types::{
    BatchOperation, BatchResult, BoxFuture, Document, Error, HlcTimestamp, Listener, Map, Query,
    QueryPage, SetOptions, StorageAdapter, Subscription, WriteResult,
};

use crate::Store;
use crate::kv::Backend;

impl<B: Backend> StorageAdapter for Store<B> {
    fn get<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, Error>> {
        Box::pin(async move { Ok(Store::get(self, collection, id)?) })
    }

    fn set<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
        options: SetOptions,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move { Ok(Store::set(self, collection, id, fields, options)?) })
    }

    fn update<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
        fields: Map,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move { Ok(Store::update(self, collection, id, fields)?) })
    }

    fn delete<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async move { Ok(Store::delete(self, collection, id)?) })
    }

    fn query<'a>(
        &'a self,
        collection: &'a str,
        query: &'a Query,
    ) -> BoxFuture<'a, Result<QueryPage, Error>> {
        Box::pin(async move { Ok(Store::query(self, collection, query)?) })
    }

    fn batch_write(
        &self,
        operations: Vec<BatchOperation>,
    ) -> BoxFuture<'_, Result<BatchResult, Error>> {
        Box::pin(async move { Ok(Store::batch(self, operations)?) })
    }

    fn subscribe_document(
        &self,
        collection: &str,
        id: &str,
        listener: Listener<Option<Document>>,
    ) -> Result<Subscription, Error> {
        Ok(Store::subscribe_document(self, collection, id, listener)?)
    }

    fn subscribe_query(
        &self,
        collection: &str,
        query: Query,
        listener: Listener<Vec<Document>>,
    ) -> Result<Subscription, Error> {
        Ok(Store::subscribe_query(self, collection, query, listener)?)
    }

    fn server_timestamp(&self) -> HlcTimestamp {
        self.now()
    }

    fn generate_id(&self, _collection: &str) -> String {
        self.new_id()
    }
}
