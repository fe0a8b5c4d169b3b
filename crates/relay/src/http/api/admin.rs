//! The admin endpoints (the seed's "sidecar ACL", membership source `api`): list groups, read
//! one, add/remove members and admins, rename. Only for `admin_pubkeys`, always NIP-98.
//!
//! Every change is one `update_state` transaction around `Gateway::apply_admin_change`: the
//! same registry path roster events take, so an API change and a concurrent 450 cannot
//! interleave. Removing, demoting and renaming need an existing group (404 otherwise); adding
//! members or admins to an unknown group creates it (gated from then on) with the caller as
//! owner.

use super::call::{ApiCall, ApiError, Callers};
use super::public::read_group;
use crate::app::App;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mls_gateway_rules::{GroupRecord, MembershipChange, RosterOp, Viewer};
use mls_proto::{parse_pubkey, unix_now, Hex32};
use mls_store::Rejection;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most pubkeys one call may name.
const MAX_PUBKEYS: usize = 1000;

/// The full record, as admins see it (members and admins included).
fn record_json(rec: &GroupRecord) -> Value {
    json!({
        "group_id": rec.group_id,
        "display_name": rec.display_name,
        "owner": rec.owner,
        "admins": rec.admins,
        "members": rec.members,
        "member_count": rec.member_count,
        "last_epoch": rec.last_epoch,
        "last_seq": rec.last_seq,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    })
}

/// The calling admin's pubkey (NIP-98, `admin_pubkeys`), or the refusal.
async fn authorize_admin(call: &ApiCall, app: &App, body: &[u8]) -> Result<Hex32, ApiError> {
    Ok(call
        .authorize(app, body, Callers::Admin)
        .await?
        .expect("admin access implies a caller"))
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body larger than {} bytes", super::call::MAX_BODY),
            )
        } else {
            ApiError::bad_request(e.body_text())
        }
    })
}

/// `GET {prefix}/admin/groups`: every group the registry knows.
pub async fn list_groups(
    State(app): State<Arc<App>>,
    call: ApiCall,
) -> Result<Json<Value>, ApiError> {
    authorize_admin(&call, &app, &[]).await?;
    let mut groups = Vec::new();
    app.store
        .read_state(&mut |state| {
            groups = app.gateway.list_groups(state)?;
            Ok(())
        })
        .await
        .map_err(ApiError::storage)?;
    let list: Vec<Value> = groups.iter().map(record_json).collect();
    Ok(Json(json!({ "groups": list })))
}

/// `GET {prefix}/admin/groups/{group_id}`: the full record.
pub async fn group(
    State(app): State<Arc<App>>,
    call: ApiCall,
    group_id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let admin = authorize_admin(&call, &app, &[]).await?;
    let group_id = path(group_id)?;
    match read_group(&app, &Viewer::authenticated_as([admin]), &group_id).await? {
        Some(rec) => Ok(Json(json!({ "group": record_json(&rec) }))),
        None => Err(ApiError::not_found("group not found")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PubkeysBody {
    pubkeys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    display_name: String,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_pubkeys(list: &[String]) -> Result<Vec<Hex32>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::bad_request("pubkeys must name at least one key"));
    }
    if list.len() > MAX_PUBKEYS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_PUBKEYS} pubkeys per call"
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            parse_pubkey(s).ok_or_else(|| {
                ApiError::bad_request(format!("pubkeys[{i}] is not a hex or npub public key"))
            })
        })
        .collect()
}

/// What an admin call changes.
enum Change {
    Roster(RosterOp, Vec<Hex32>),
    Rename(String),
}

/// Applies one change in one state transaction; returns the new record.
async fn apply(
    app: &App,
    admin: Hex32,
    group_id: String,
    change: Change,
) -> Result<GroupRecord, ApiError> {
    let gateway = app.gateway.clone();
    let now = unix_now();
    let membership = matches!(change, Change::Roster(..));
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = app
        .store
        .update_state(Box::new(move |state| {
            let viewer = Viewer::authenticated_as([admin]);
            let existing = gateway
                .group_for(&viewer, &group_id, state)
                .map_err(|e| Rejection(format!("error: {e}")))?;
            let needs_group = matches!(
                change,
                Change::Rename(_) | Change::Roster(RosterOp::Remove | RosterOp::Demote, _)
            );
            if needs_group && existing.is_none() {
                return Err(Rejection("not-found: group not found".into()));
            }
            let (op, pubkeys, display_name) = match change {
                Change::Roster(op, pubkeys) => (op, pubkeys, None),
                // A rename is a `replace` with the members the group already has: same path,
                // roles unchanged.
                Change::Rename(name) => (
                    RosterOp::Replace,
                    existing.map(|r| r.members).unwrap_or_default(),
                    Some(name),
                ),
            };
            let change = MembershipChange {
                group_id,
                op,
                pubkeys,
                display_name,
                actor: Some(admin),
            };
            let rec = gateway.apply_admin_change(&change, now, state)?;
            let _ = tx.send(rec);
            Ok(())
        }))
        .await
        .map_err(ApiError::storage)?;
    outcome.map_err(ApiError::from_rejection)?;
    let rec = rx
        .try_recv()
        .map_err(|_| ApiError::unavailable("the change committed without a result"))?;
    crate::metrics::count_group_change(membership);
    tracing::info!(
        admin = %mls_proto::short_pubkey(&admin),
        group = %crate::logging::redact(&mls_gateway_rules::dialect::short(&rec.group_id)),
        members = rec.member_count,
        "admin api: group changed"
    );
    Ok(rec)
}

async fn roster_change(
    app: Arc<App>,
    call: ApiCall,
    group_id: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
    op: RosterOp,
) -> Result<Json<Value>, ApiError> {
    let bytes = body(bytes)?;
    let admin = authorize_admin(&call, &app, &bytes).await?;
    let group_id = path(group_id)?;
    let req: PubkeysBody = parse_json(&bytes)?;
    let pubkeys = parse_pubkeys(&req.pubkeys)?;
    let rec = apply(&app, admin, group_id, Change::Roster(op, pubkeys)).await?;
    Ok(Json(json!({ "group": record_json(&rec) })))
}

macro_rules! roster_endpoint {
    ($name:ident, $op:expr, $doc:literal) => {
        #[doc = $doc]
        pub async fn $name(
            State(app): State<Arc<App>>,
            call: ApiCall,
            group_id: Result<Path<String>, PathRejection>,
            bytes: Result<Bytes, BytesRejection>,
        ) -> Result<Json<Value>, ApiError> {
            roster_change(app, call, group_id, bytes, $op).await
        }
    };
}

roster_endpoint!(
    add_members,
    RosterOp::Add,
    "`POST {prefix}/admin/groups/{group_id}/members` `{\"pubkeys\":[…]}`: adds members."
);
roster_endpoint!(
    remove_members,
    RosterOp::Remove,
    "`DELETE {prefix}/admin/groups/{group_id}/members` `{\"pubkeys\":[…]}`: removes them (every role)."
);
roster_endpoint!(
    add_admins,
    RosterOp::Promote,
    "`POST {prefix}/admin/groups/{group_id}/admins` `{\"pubkeys\":[…]}`: makes them admins (and members)."
);
roster_endpoint!(
    remove_admins,
    RosterOp::Demote,
    "`DELETE {prefix}/admin/groups/{group_id}/admins` `{\"pubkeys\":[…]}`: takes the admin role (membership stays)."
);

/// `PATCH {prefix}/admin/groups/{group_id}` `{"display_name":"…"}`: renames the group.
pub async fn rename(
    State(app): State<Arc<App>>,
    call: ApiCall,
    group_id: Result<Path<String>, PathRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let bytes = body(bytes)?;
    let admin = authorize_admin(&call, &app, &bytes).await?;
    let group_id = path(group_id)?;
    let req: RenameBody = parse_json(&bytes)?;
    let rec = apply(&app, admin, group_id, Change::Rename(req.display_name)).await?;
    Ok(Json(json!({ "group": record_json(&rec) })))
}
