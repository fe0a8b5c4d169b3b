//! Reads: how a Nostr filter becomes Firestore queries, and the walks over their pages.
//!
//! Every event query orders by `order_key` (newest first, ties lowest id first) and bounds
//! `since` / `until` as a range on that same field, so it needs at most one composite index:
//! the filter's driving condition (`#x` values as `tags array-contains-any`, else `authors`
//! as `pubkey in`, else `kinds` as `kind in`; at most 30 values per query, Firestore's bound
//! for a disjunction), plus `kind ==` when the filter names exactly one kind, then
//! `order_key`. Everything else in the filter is checked on the fetched event. Pages continue
//! with `order_key >` the last key (a field cursor: the emulator ignores query cursors).

use crate::client::{Client, RpcResult};
use crate::model::{self, integer, string, EVENTS};
use googleapis_tonic_google_firestore_v1::google::firestore::v1::structured_query::{
    composite_filter, field_filter, filter::FilterType, CollectionSelector, CompositeFilter,
    Direction, FieldFilter, FieldReference, Filter as FsFilter, Order,
};
use googleapis_tonic_google_firestore_v1::google::firestore::v1::{
    value::ValueType, Document, StructuredQuery, Value,
};
use mls_proto::Filter;

/// Most values in one `in` / `array-contains-any` (Firestore's limit on disjunctions).
pub(crate) const MAX_DISJUNCTION: usize = 30;

pub(crate) use field_filter::Operator as Op;

pub(crate) fn cond(field: &str, op: Op, value: Value) -> FsFilter {
    FsFilter {
        filter_type: Some(FilterType::FieldFilter(FieldFilter {
            field: Some(FieldReference {
                field_path: field.into(),
            }),
            op: op as i32,
            value: Some(value),
        })),
    }
}

/// A structured query on `collection` at the database root.
pub(crate) fn structured(
    collection: &str,
    mut conds: Vec<FsFilter>,
    order: Option<(&str, bool)>,
    limit: Option<i32>,
) -> StructuredQuery {
    let r#where = match conds.len() {
        0 => None,
        1 => conds.pop(),
        _ => Some(FsFilter {
            filter_type: Some(FilterType::CompositeFilter(CompositeFilter {
                op: composite_filter::Operator::And as i32,
                filters: conds,
            })),
        }),
    };
    StructuredQuery {
        from: vec![CollectionSelector {
            collection_id: collection.into(),
            all_descendants: false,
        }],
        r#where,
        order_by: order
            .map(|(field, desc)| Order {
                field: Some(FieldReference {
                    field_path: field.into(),
                }),
                direction: if desc {
                    Direction::Descending
                } else {
                    Direction::Ascending
                } as i32,
            })
            .into_iter()
            .collect(),
        limit,
        ..Default::default()
    }
}

/// One Firestore query of a filter's plan: its equality / membership conditions (the
/// `order_key` range and page cursor are added per page).
#[derive(Debug, Clone)]
pub(crate) struct Part {
    conds: Vec<FsFilter>,
    /// The read's scope is one of the conditions (`audience array-contains-any`); when
    /// false the walk checks it on each fetched event.
    pub scoped: bool,
}

/// The queries that together find every event a filter (without `ids`) can match, in the
/// read's scope when `scope` holds its `audience` values (`None`: every event).
///
/// The scope is an `array-contains-any` on `audience`. Firestore allows one such condition
/// per query, so a filter driven by a tag (`tags array-contains-any`) leaves the scope to
/// the walk; and it counts a query's disjunctions (the product of its `in` and
/// `array-contains-any` list sizes, at most 30), so the lists are cut to fit.
pub(crate) fn plan(filter: &Filter, scope: Option<&[String]>) -> Vec<Part> {
    let one_kind = filter
        .kinds
        .as_ref()
        .filter(|k| k.len() == 1)
        .map(|k| cond("kind", Op::Equal, integer(i64::from(k[0]))));
    let list = |values: Vec<Value>| model::array(values);
    let tag = filter
        .tags
        .iter()
        .find(|(letter, values)| letter.is_ascii_alphabetic() && !values.is_empty());
    if let Some((letter, values)) = tag {
        let entries: Vec<Value> = values
            .iter()
            .map(|v| string(format!("{letter}:{v}")))
            .collect();
        return entries
            .chunks(MAX_DISJUNCTION)
            .map(|chunk| Part {
                conds: std::iter::once(cond("tags", Op::ArrayContainsAny, list(chunk.to_vec())))
                    .chain(one_kind.clone())
                    .collect(),
                scoped: scope.is_none(),
            })
            .collect();
    }
    // The driving `in` (or `==`) condition, if any: field and values.
    let driving: Option<(&str, Vec<Value>)> =
        if let Some(authors) = filter.authors.as_ref().filter(|a| !a.is_empty()) {
            Some((
                "pubkey",
                authors.iter().map(|a| string(a.to_hex())).collect(),
            ))
        } else {
            filter
                .kinds
                .as_ref()
                .filter(|k| !k.is_empty())
                .map(|kinds| {
                    (
                        "kind",
                        kinds.iter().map(|k| integer(i64::from(*k))).collect(),
                    )
                })
        };
    let extra = match driving {
        Some(("pubkey", _)) => one_kind.clone(),
        _ => None,
    };
    // Scope values per query, and then driving values per query, within 30 disjunctions.
    let scope_chunks: Vec<Option<Value>> = match scope {
        None => vec![None],
        Some(values) => {
            let values: Vec<Value> = values.iter().map(|v| string(v.clone())).collect();
            values
                .chunks(MAX_DISJUNCTION)
                .map(|c| Some(list(c.to_vec())))
                .collect()
        }
    };
    let mut parts = Vec::new();
    for audience in scope_chunks {
        let width = match &audience {
            Some(Value {
                value_type: Some(ValueType::ArrayValue(a)),
            }) => a.values.len().max(1),
            _ => 1,
        };
        let scope_cond = audience.map(|v| cond("audience", Op::ArrayContainsAny, v));
        match &driving {
            None => parts.push(Part {
                conds: scope_cond.into_iter().collect(),
                scoped: true,
            }),
            Some((field, values)) => {
                for chunk in values.chunks((MAX_DISJUNCTION / width).max(1)) {
                    let driving = if chunk.len() == 1 {
                        cond(field, Op::Equal, chunk[0].clone())
                    } else {
                        cond(field, Op::In, list(chunk.to_vec()))
                    };
                    parts.push(Part {
                        conds: std::iter::once(driving)
                            .chain(extra.clone())
                            .chain(scope_cond.clone())
                            .collect(),
                        scoped: true,
                    });
                }
            }
        }
    }
    parts
}

/// One page of `part`'s events within the filter's time range, after `cursor` (an
/// `order_key`), at most `size`.
pub(crate) async fn page(
    client: &Client,
    part: &Part,
    filter: &Filter,
    cursor: Option<String>,
    size: i32,
) -> RpcResult<Vec<Document>> {
    let mut conds = part.conds.clone();
    match cursor {
        Some(after) => conds.push(cond("order_key", Op::GreaterThan, string(after))),
        None => {
            if let Some(until) = filter.until {
                conds.push(cond(
                    "order_key",
                    Op::GreaterThanOrEqual,
                    string(model::order_key_at(until)),
                ));
            }
        }
    }
    if let Some(since) = filter.since.filter(|s| *s > 0) {
        conds.push(cond(
            "order_key",
            Op::LessThan,
            string(model::order_key_at(since - 1)),
        ));
    }
    client
        .query(
            structured(EVENTS, conds, Some(("order_key", false)), Some(size)),
            None,
        )
        .await
}

/// Largest `seq` compared in a query: 2^53 - 1, the largest integer JavaScript (the test
/// emulator) holds exactly. No store reaches it (285 years at a million events a second).
const MAX_SEQ: u64 = (1 << 53) - 1;

/// Every stored event with `seq > after`, in seq order, at most `limit`.
pub(crate) async fn since(client: &Client, after: u64, limit: i32) -> RpcResult<Vec<Document>> {
    let after = after.min(MAX_SEQ);
    client
        .query(
            structured(
                EVENTS,
                vec![cond("seq", Op::GreaterThan, integer(model::ts(after)))],
                Some(("seq", false)),
                Some(limit),
            ),
            None,
        )
        .await
}

/// One page of a walk over a whole collection ordered by `field` (ascending unless `desc`),
/// after `cursor`, optionally in a (read-only) transaction.
pub(crate) async fn ordered_page(
    client: &Client,
    collection: &str,
    field: &str,
    desc: bool,
    cursor: Option<String>,
    size: i32,
    transaction: Option<&[u8]>,
) -> RpcResult<Vec<Document>> {
    let conds = cursor
        .map(|c| {
            cond(
                field,
                if desc { Op::LessThan } else { Op::GreaterThan },
                string(c),
            )
        })
        .into_iter()
        .collect();
    client
        .query(
            structured(collection, conds, Some((field, desc)), Some(size)),
            transaction,
        )
        .await
}
