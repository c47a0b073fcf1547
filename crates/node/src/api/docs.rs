//! Documents, queries, batches and history: `/api/v1/collections/...` and
//! `/api/v1/batch`, answered by the node's `collection(c).doc(id)` API.
//!
//! A collection exists once a document was written to it: reading one that
//! never held a document answers an empty page (not 404), as a query over it
//! would; a document that does not exist is 404 `not_found`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post, put};
use ecomesh_sync::{BatchOperation, FieldOp, SetOptions, Value};
use ecomesh_types::{Map, Query};
use serde::Deserialize;

use super::ApiState;
use super::error::{ApiError, ApiResult};
use super::json::{JsonBody, cid_json, fields_from_json};
use super::query::{DEFAULT_PAGE, MAX_PAGE, doc_json, next_cursor, query_from_json};
use super::rest::{
    Endpoint, Params, PathParams, build, check_name, ep, parse_cid, sync_err, written,
};

/// Most operations in one `POST /api/v1/batch` (`batch_too_large` beyond it).
pub const MAX_BATCH: usize = 500;
/// Most field operations in one `POST .../ops` (`batch_too_large` beyond it).
pub const MAX_OPS: usize = 256;

type Json2 = Json<serde_json::Value>;

/// The routes of this module.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep("GET", "/collections", get(list_collections)),
        ep("GET", "/collections/{c}/docs", get(list_docs)),
        ep("POST", "/collections/{c}/query", post(query_docs)),
        ep("GET", "/collections/{c}/docs/{id}", get(get_doc)),
        ep("PUT", "/collections/{c}/docs/{id}", put(set_doc)),
        ep("PATCH", "/collections/{c}/docs/{id}", patch(merge_doc)),
        ep("DELETE", "/collections/{c}/docs/{id}", delete(delete_doc)),
        ep("POST", "/collections/{c}/docs/{id}/ops", post(apply_ops)),
        ep("GET", "/collections/{c}/docs/{id}/history", get(history)),
        ep(
            "GET",
            "/collections/{c}/docs/{id}/versions/{cid}",
            get(at_version),
        ),
        ep("POST", "/collections/{c}/docs/{id}/restore", post(restore)),
        ep("POST", "/batch", post(batch)),
    ]
}

/// The router of this module.
pub(crate) fn routes() -> axum::Router<Arc<ApiState>> {
    build(endpoints())
}

fn collection(c: &str) -> ApiResult<()> {
    check_name("the collection name", c)
}

fn key(c: &str, id: &str) -> ApiResult<()> {
    collection(c)?;
    check_name("the document id", id)
}

/// `GET /collections`: every collection with its count of live documents.
async fn list_collections(State(state): State<Arc<ApiState>>) -> ApiResult<Json2> {
    let rows: Vec<serde_json::Value> = state
        .node()
        .collections()
        .map_err(sync_err)?
        .into_iter()
        .map(|c| serde_json::json!({"name": c.name, "documents": c.documents}))
        .collect();
    Ok(Json(serde_json::json!({ "collections": rows })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageParams {
    limit: Option<usize>,
    start_after: Option<String>,
}

async fn run_query(state: &ApiState, c: &str, query: &Query) -> ApiResult<Json2> {
    let docs = state.node().query(c, query).await.map_err(sync_err)?;
    let rows = docs.iter().map(doc_json).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(serde_json::json!({
        "documents": rows,
        "next_cursor": next_cursor(query, &docs),
    })))
}

/// `GET /collections/{c}/docs?limit=&start_after=`: a page of documents by id.
async fn list_docs(
    State(state): State<Arc<ApiState>>,
    PathParams(c): PathParams<String>,
    Params(p): Params<PageParams>,
) -> ApiResult<Json2> {
    collection(&c)?;
    let mut q = serde_json::json!({ "limit": page_limit(p.limit)? });
    if let Some(s) = p.start_after {
        q["start_after"] = serde_json::Value::String(s);
    }
    let query = query_from_json(&q)?;
    run_query(&state, &c, &query).await
}

/// `POST /collections/{c}/query`: the query JSON of [`super::query`].
async fn query_docs(
    State(state): State<Arc<ApiState>>,
    PathParams(c): PathParams<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Json2> {
    collection(&c)?;
    let query = query_from_json(&body)?;
    run_query(&state, &c, &query).await
}

/// `GET /collections/{c}/docs/{id}`: the document and its head versions.
async fn get_doc(
    State(state): State<Arc<ApiState>>,
    PathParams((c, id)): PathParams<(String, String)>,
) -> ApiResult<Json2> {
    key(&c, &id)?;
    let doc = state.node().collection(&c).doc(&id);
    let Some(d) = doc.get().await.map_err(sync_err)? else {
        return Err(ApiError::not_found(format!("no document {c}/{id}")));
    };
    let mut out = doc_json(&d)?;
    let heads = doc.version().map_err(sync_err)?;
    out["version"] = heads.iter().map(cid_json).collect();
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldsBody {
    fields: serde_json::Value,
}

async fn write_fields(
    state: &ApiState,
    c: &str,
    id: &str,
    body: &FieldsBody,
    options: SetOptions,
) -> ApiResult<Json2> {
    key(c, id)?;
    let fields = fields_from_json(&body.fields)?;
    let w = state
        .node()
        .collection(c)
        .doc(id)
        .set(fields, options)
        .await
        .map_err(sync_err)?;
    Ok(Json(written(state, &w)?))
}

/// `PUT /collections/{c}/docs/{id}`: `{"fields": {...}}` replaces the document.
async fn set_doc(
    State(state): State<Arc<ApiState>>,
    PathParams((c, id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<FieldsBody>,
) -> ApiResult<Json2> {
    write_fields(&state, &c, &id, &body, SetOptions::REPLACE).await
}

/// `PATCH /collections/{c}/docs/{id}`: `{"fields": {...}}` merged in (created when absent).
async fn merge_doc(
    State(state): State<Arc<ApiState>>,
    PathParams((c, id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<FieldsBody>,
) -> ApiResult<Json2> {
    write_fields(&state, &c, &id, &body, SetOptions::MERGE).await
}

/// `DELETE /collections/{c}/docs/{id}`.
async fn delete_doc(
    State(state): State<Arc<ApiState>>,
    PathParams((c, id)): PathParams<(String, String)>,
) -> ApiResult<Json2> {
    key(&c, &id)?;
    let w = state
        .node()
        .collection(&c)
        .doc(&id)
        .delete()
        .await
        .map_err(sync_err)?;
    Ok(Json(written(&state, &w)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpJson {
    field: String,
    op: String,
    by: Option<i64>,
    value: Option<serde_json::Value>,
    values: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsBody {
    ops: Vec<OpJson>,
}

fn too_many(what: &str, n: usize, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "batch_too_large",
        format!("{n} {what}; at most {max} in one request"),
    )
}

fn field_op(o: OpJson) -> ApiResult<(String, FieldOp)> {
    let values = |v: Option<Vec<serde_json::Value>>| -> ApiResult<Vec<Value>> {
        v.ok_or_else(|| ApiError::bad_json(format!("op {:?} needs \"values\": [...]", o.op)))?
            .iter()
            .map(super::query::value_from_json)
            .collect()
    };
    let op = match o.op.as_str() {
        "increment" => FieldOp::Increment(
            o.by.ok_or_else(|| ApiError::bad_json("op \"increment\" needs \"by\": integer"))?,
        ),
        "set" => FieldOp::Set(super::query::value_from_json(
            o.value
                .as_ref()
                .ok_or_else(|| ApiError::bad_json("op \"set\" needs \"value\""))?,
        )?),
        "delete" => FieldOp::Remove,
        "add_to_set" => FieldOp::AddToSet(values(o.values)?),
        "remove_from_set" => FieldOp::RemoveFromSet(values(o.values)?),
        other => {
            return Err(ApiError::bad_json(format!(
                "unknown op {other:?}: use increment, set, delete, add_to_set or remove_from_set"
            )));
        }
    };
    check_name("the field name", &o.field)?;
    Ok((o.field, op))
}

/// `POST /collections/{c}/docs/{id}/ops`: field operations (counters, sets, writes, removals).
async fn apply_ops(
    State(state): State<Arc<ApiState>>,
    PathParams((c, id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<OpsBody>,
) -> ApiResult<Json2> {
    key(&c, &id)?;
    if body.ops.is_empty() {
        return Err(ApiError::bad_json("\"ops\" is empty"));
    }
    if body.ops.len() > MAX_OPS {
        return Err(too_many("field operations", body.ops.len(), MAX_OPS));
    }
    let ops = body
        .ops
        .into_iter()
        .map(field_op)
        .collect::<ApiResult<Vec<_>>>()?;
    let w = state
        .node()
        .collection(&c)
        .doc(&id)
        .apply(ops)
        .await
        .map_err(sync_err)?;
    Ok(Json(written(&state, &w)?))
}

fn version_json(v: &ecomesh_sync::VersionInfo) -> serde_json::Value {
    serde_json::json!({
        "version": cid_json(&v.cid),
        "parents": v.parents.iter().map(cid_json).collect::<Vec<_>>(),
        "author": v.author.to_string(),
        "time_ms": v.timestamp.physical_ms,
        "logical": v.timestamp.logical,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    limit: Option<usize>,
}

/// `GET /collections/{c}/docs/{id}/history?limit=`: the newest `limit`
/// versions, oldest first; `more` tells that older ones were left out.
async fn history(
    State(state): State<Arc<ApiState>>,
    PathParams((c, id)): PathParams<(String, String)>,
    Params(p): Params<HistoryParams>,
) -> ApiResult<Json2> {
    key(&c, &id)?;
    let limit = page_limit(p.limit)?;
    let all = state
        .node()
        .collection(&c)
        .doc(&id)
        .history()
        .map_err(sync_err)?;
    if all.is_empty() {
        return Err(ApiError::not_found(format!("no document {c}/{id}")));
    }
    let skip = all.len().saturating_sub(limit);
    let versions: Vec<_> = all[skip..].iter().map(version_json).collect();
    Ok(Json(
        serde_json::json!({ "versions": versions, "more": skip > 0 }),
    ))
}

/// A page size from a `limit` parameter: [`DEFAULT_PAGE`] when absent,
/// `page_too_large` above [`MAX_PAGE`].
pub(crate) fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(l) if l > MAX_PAGE => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "page_too_large",
            format!("limit {l} is above the largest page, {MAX_PAGE}"),
        )),
        Some(l) => Ok(l),
    }
}

/// `GET /collections/{c}/docs/{id}/versions/{cid}`: the document as of that version.
async fn at_version(
    State(state): State<Arc<ApiState>>,
    PathParams((c, id, cid)): PathParams<(String, String, String)>,
) -> ApiResult<Json2> {
    key(&c, &id)?;
    let cid = parse_cid(&cid)?;
    let Some(v) = state
        .node()
        .collection(&c)
        .doc(&id)
        .at(&cid)
        .map_err(sync_err)?
    else {
        return Err(ApiError::not_found(format!(
            "{c}/{id} has no version {}",
            super::json::cid_text(&cid)
        )));
    };
    let mut out = version_json(&v.info);
    out["collection"] = c.into();
    out["id"] = id.into();
    out["deleted"] = v.document.is_none().into();
    out["fields"] = match &v.document {
        Some(d) => super::json::fields_to_json(&d.fields)?,
        None => serde_json::Value::Null,
    };
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    version: serde_json::Value,
}

/// A CID given as a DAG-JSON link `{"/": "bafy..."}` or as its text.
fn cid_of(v: &serde_json::Value) -> ApiResult<ecomesh_types::ContentId> {
    let text = match v {
        serde_json::Value::String(s) => s.as_str(),
        serde_json::Value::Object(o) if o.len() == 1 => match o.get("/") {
            Some(serde_json::Value::String(s)) => s.as_str(),
            _ => {
                return Err(ApiError::bad_json(
                    "\"version\" must be {\"/\": \"bafy...\"}",
                ));
            }
        },
        _ => {
            return Err(ApiError::bad_json(
                "\"version\" must be {\"/\": \"bafy...\"}",
            ));
        }
    };
    parse_cid(text)
}

/// `POST /collections/{c}/docs/{id}/restore`: `{"version": {"/": cid}}`.
async fn restore(
    State(state): State<Arc<ApiState>>,
    PathParams((c, id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<RestoreBody>,
) -> ApiResult<Json2> {
    key(&c, &id)?;
    let cid = cid_of(&body.version)?;
    let doc = state.node().collection(&c).doc(&id);
    if doc.at(&cid).map_err(sync_err)?.is_none() {
        return Err(ApiError::not_found(format!(
            "{c}/{id} has no version {}",
            super::json::cid_text(&cid)
        )));
    }
    let w = doc.restore(&cid).await.map_err(sync_err)?;
    Ok(Json(written(&state, &w)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchOpJson {
    op: String,
    collection: String,
    id: String,
    fields: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    operations: Vec<BatchOpJson>,
}

fn batch_op(i: usize, o: BatchOpJson) -> ApiResult<BatchOperation> {
    key(&o.collection, &o.id)?;
    let fields = |f: Option<serde_json::Value>| -> ApiResult<Map> {
        fields_from_json(&f.ok_or_else(|| {
            ApiError::bad_json(format!("operation {i} ({}) needs \"fields\"", o.op))
        })?)
    };
    Ok(match o.op.as_str() {
        "set" | "merge" => BatchOperation::Set {
            merge: o.op == "merge",
            fields: fields(o.fields)?,
            collection: o.collection,
            id: o.id,
        },
        "update" => BatchOperation::Update {
            fields: fields(o.fields)?,
            collection: o.collection,
            id: o.id,
        },
        "delete" if o.fields.is_none() => BatchOperation::Delete {
            collection: o.collection,
            id: o.id,
        },
        "delete" => {
            return Err(ApiError::bad_json(format!(
                "operation {i}: delete takes no \"fields\""
            )));
        }
        other => {
            return Err(ApiError::bad_json(format!(
                "operation {i}: unknown op {other:?}; use set, merge, update or delete"
            )));
        }
    })
}

/// `POST /batch`: operations applied atomically (all commit or none).
async fn batch(
    State(state): State<Arc<ApiState>>,
    JsonBody(body): JsonBody<BatchBody>,
) -> ApiResult<Json2> {
    let n = body.operations.len();
    if n == 0 {
        return Err(ApiError::bad_json("\"operations\" is empty"));
    }
    if n > MAX_BATCH {
        return Err(too_many("operations", n, MAX_BATCH));
    }
    let ops = body
        .operations
        .into_iter()
        .enumerate()
        .map(|(i, o)| batch_op(i, o))
        .collect::<ApiResult<Vec<_>>>()?;
    let r = state.node().batch(ops).await.map_err(sync_err)?;
    let root = state.node().root_cid().map_err(sync_err)?;
    let results: Vec<_> = r
        .results
        .iter()
        .map(|w| serde_json::json!({ "version": w.version.as_ref().map(cid_json) }))
        .collect();
    Ok(Json(serde_json::json!({
        "results": results,
        "root_cid": super::json::cid_text(&root),
    })))
}
