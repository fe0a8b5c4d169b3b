//! The client endpoints: `GET groups/{group_id}` and `GET keypackages?owner=`.

use super::call::{ApiCall, ApiError, Callers};
use crate::app::App;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use mls_gateway_rules::{GroupRecord, KeyPackageEntry, Viewer};
use mls_proto::{parse_pubkey, unix_now};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET {prefix}/groups/{group_id}`: the group's summary for a member or admin of it (or a
/// configured admin); 404 for everyone else, whether or not the group exists.
pub async fn group(
    State(app): State<Arc<App>>,
    call: ApiCall,
    group_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = call.authorize(&app, &[], Callers::Authenticated).await?;
    let Path(group_id) = group_id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let viewer = Viewer::authenticated_as(caller);
    let record = read_group(&app, &viewer, &group_id).await?;
    match record {
        Some(rec) => Ok(Json(rec.summary())),
        None => Err(ApiError::not_found("group not found")),
    }
}

/// The group as `viewer` may see it (`Gateway::group_for`).
pub async fn read_group(
    app: &App,
    viewer: &Viewer,
    group_id: &str,
) -> Result<Option<GroupRecord>, ApiError> {
    let mut found = None;
    app.store
        .read_state(&mut |state| {
            found = app.gateway.group_for(viewer, group_id, state)?;
            Ok(())
        })
        .await
        .map_err(ApiError::storage)?;
    Ok(found)
}

#[derive(Deserialize)]
pub struct OwnerQuery {
    owner: Option<String>,
}

/// `GET {prefix}/keypackages?owner=<hex|npub>`: the owner's unexpired KeyPackages, newest
/// first (metadata only; the events themselves are fetched with REQ).
pub async fn keypackages(
    State(app): State<Arc<App>>,
    call: ApiCall,
    query: Result<Query<OwnerQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    call.authorize(&app, &[], Callers::Public).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let owner = query
        .owner
        .ok_or_else(|| ApiError::bad_request("owner query parameter required (hex or npub)"))?;
    let owner = parse_pubkey(&owner)
        .ok_or_else(|| ApiError::bad_request("owner is not a hex or npub public key"))?;
    let now = unix_now();
    let mut entries: Vec<KeyPackageEntry> = Vec::new();
    app.store
        .read_state(&mut |state| {
            entries = app.gateway.keypackages_of(&owner, now, state)?;
            Ok(())
        })
        .await
        .map_err(ApiError::storage)?;
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| e.expires_at > now)
        .map(|e| {
            json!({
                "owner": e.owner,
                "key_reference": e.key_reference,
                "ciphersuite": e.ciphersuite,
                "expires_at": e.expires_at,
                "event_id": e.event_id,
            })
        })
        .collect();
    Ok(Json(json!({ "keypackages": list })))
}
