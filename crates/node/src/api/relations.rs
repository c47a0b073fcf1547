//! Relationships and capabilities: `/api/v1/relations` and
//! `/api/v1/capabilities`. The rows are those of `ecomesh relation` and
//! `ecomesh cap` ([`crate::relation`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use ecomesh_sync::SyncError;
use serde::Deserialize;

use super::ApiState;
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::rest::{Endpoint, PathParams, build, check_name, ep, sync_err};
use crate::relation;

type Answer = ApiResult<Json<serde_json::Value>>;

/// The routes of this module.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep("GET", "/relations", get(list_relations)),
        ep("PUT", "/relations/{peer}", put(set_relation)),
        ep("DELETE", "/relations/{peer}", delete(remove_relation)),
        ep("GET", "/capabilities", get(list_caps)),
        ep("POST", "/capabilities/restricted", post(restrict)),
        ep("POST", "/capabilities/grants", post(grant)),
        ep("POST", "/capabilities/tokens", post(install)),
        ep("DELETE", "/capabilities/tokens/{id}", delete(revoke)),
    ]
}

/// The router of this module.
pub(crate) fn routes() -> axum::Router<Arc<ApiState>> {
    build(endpoints())
}

/// The node's errors here: a bad peer id is 400 `bad_peer`, a token that
/// does not decode or verify 400 `invalid_capability`, the rest as
/// [`sync_err`] maps them.
fn err(e: SyncError) -> ApiError {
    match e {
        SyncError::InvalidPeerId { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_peer", e.to_string())
        }
        SyncError::Identity(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_capability", e.to_string())
        }
        e => sync_err(e),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Answer {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `GET /relations`: every relationship, by peer id.
async fn list_relations(State(state): State<Arc<ApiState>>) -> Answer {
    json(&serde_json::json!({ "relations": relation::relation_rows(state.node()) }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelBody {
    level: String,
}

/// `PUT /relations/{peer}`: `{"level": "family"}` sets the relationship.
async fn set_relation(
    State(state): State<Arc<ApiState>>,
    PathParams(peer): PathParams<String>,
    JsonBody(body): JsonBody<LevelBody>,
) -> Answer {
    let row = relation::set_relation(state.node(), &peer, &body.level).map_err(err)?;
    json(&row)
}

/// `DELETE /relations/{peer}`: removes the relationship set at run time.
async fn remove_relation(
    State(state): State<Arc<ApiState>>,
    PathParams(peer): PathParams<String>,
) -> Answer {
    let (removed, row) = relation::remove_relation(state.node(), &peer).map_err(err)?;
    if !removed {
        return Err(ApiError::not_found(format!(
            "no relationship was set with {peer} at run time (it is {} from {})",
            row.level, row.source
        )));
    }
    json(&row)
}

/// `GET /capabilities`: restricted collections, tokens, refusals since the last list.
async fn list_caps(State(state): State<Arc<ApiState>>) -> Answer {
    json(&relation::cap_list(state.node()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestrictBody {
    collection: String,
}

/// `POST /capabilities/restricted`: `{"collection"}` becomes non-public.
async fn restrict(
    State(state): State<Arc<ApiState>>,
    JsonBody(body): JsonBody<RestrictBody>,
) -> Answer {
    check_name("collection", &body.collection)?;
    json(&relation::restrict(state.node(), &body.collection).map_err(err)?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    collection: String,
    peer: String,
    actions: Vec<String>,
    expires_secs: Option<u64>,
}

/// `POST /capabilities/grants`: `{"collection", "peer", "actions": ["read",
/// "write"], "expires_secs"}` issues and installs a token.
async fn grant(State(state): State<Arc<ApiState>>, JsonBody(body): JsonBody<GrantBody>) -> Answer {
    check_name("collection", &body.collection)?;
    let (mut read, mut write) = (false, false);
    for a in &body.actions {
        match a.as_str() {
            "read" => read = true,
            "write" => write = true,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    format!("{a:?} is not an action; actions are read and write"),
                ));
            }
        }
    }
    let valid_for = body
        .expires_secs
        .map_or(relation::DEFAULT_CAP_LIFETIME, Duration::from_secs);
    let row = relation::grant(
        state.node(),
        &body.collection,
        &body.peer,
        read,
        write,
        valid_for,
    )
    .map_err(err)?;
    json(&row)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

/// `POST /capabilities/tokens`: `{"token"}` installs a token granted elsewhere.
async fn install(
    State(state): State<Arc<ApiState>>,
    JsonBody(body): JsonBody<TokenBody>,
) -> Answer {
    json(&relation::install(state.node(), &body.token).map_err(err)?)
}

/// `DELETE /capabilities/tokens/{id}`: revokes the token.
async fn revoke(State(state): State<Arc<ApiState>>, PathParams(id): PathParams<String>) -> Answer {
    json(&relation::revoke(state.node(), &id).map_err(err)?)
}
