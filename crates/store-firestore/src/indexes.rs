//! Indexes as code: the shape of every structured query the store sends, and whether
//! `deploy/firestore.indexes.json` serves it.
//!
//! The emulator answers any query; production Firestore refuses one that needs a composite
//! index the database does not have (`FAILED_PRECONDITION: The query requires an index`). So
//! the store can record the shape of each query it runs ([`QueryLog`]: in memory for a test,
//! or appended as JSON lines to the file named by `MLS_FIRESTORE_QUERY_LOG`), and
//! [`missing_index`] tells which shape the index file would not serve.
//!
//! Firestore's rules, as far as this store's queries need them: equality filters alone are
//! served by the automatic single-field indexes (merged); one field's range and order alone
//! too (ascending or descending), unless that field is exempted by a `fieldOverrides` entry
//! with no indexes; equality or `array-contains` filters *plus* an order on another field need
//! a composite index holding those fields and then the order field, in its direction.

use googleapis_tonic_google_firestore_v1::google::firestore::v1::structured_query::{
    field_filter, filter::FilterType, Direction,
};
use googleapis_tonic_google_firestore_v1::google::firestore::v1::StructuredQuery;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::Mutex;

/// What a query asks of the indexes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryShape {
    pub collection: String,
    /// Fields compared with `==`.
    pub equalities: BTreeSet<String>,
    /// The field of an `array-contains` filter.
    pub array_contains: Option<String>,
    /// Fields with a range (`<`, `<=`, `>`, `>=`).
    pub ranges: BTreeSet<String>,
    /// Order-by fields and whether each is descending.
    pub order: Vec<(String, bool)>,
}

impl QueryShape {
    pub(crate) fn of(q: &StructuredQuery) -> QueryShape {
        let mut shape = QueryShape {
            collection: q
                .from
                .first()
                .map(|c| c.collection_id.clone())
                .unwrap_or_default(),
            equalities: BTreeSet::new(),
            array_contains: None,
            ranges: BTreeSet::new(),
            order: q
                .order_by
                .iter()
                .map(|o| {
                    (
                        o.field
                            .as_ref()
                            .map(|f| f.field_path.clone())
                            .unwrap_or_default(),
                        o.direction == Direction::Descending as i32,
                    )
                })
                .collect(),
        };
        let mut pending: Vec<&FilterType> = q
            .r#where
            .iter()
            .filter_map(|f| f.filter_type.as_ref())
            .collect();
        while let Some(filter) = pending.pop() {
            match filter {
                FilterType::CompositeFilter(c) => {
                    pending.extend(c.filters.iter().filter_map(|f| f.filter_type.as_ref()))
                }
                FilterType::FieldFilter(f) => {
                    let field = f
                        .field
                        .as_ref()
                        .map(|f| f.field_path.clone())
                        .unwrap_or_default();
                    use field_filter::Operator as Op;
                    match Op::try_from(f.op).unwrap_or(Op::Unspecified) {
                        Op::Equal | Op::In => {
                            shape.equalities.insert(field);
                        }
                        Op::ArrayContains | Op::ArrayContainsAny => {
                            shape.array_contains = Some(field)
                        }
                        _ => {
                            shape.ranges.insert(field);
                        }
                    }
                }
                FilterType::UnaryFilter(_) => {}
            }
        }
        shape
    }

    pub fn to_json(&self) -> Value {
        json!({
            "collection": self.collection,
            "equalities": self.equalities,
            "array_contains": self.array_contains,
            "ranges": self.ranges,
            "order": self.order.iter().map(|(f, desc)| json!([f, if *desc { "DESCENDING" } else { "ASCENDING" }])).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> Option<QueryShape> {
        let strings = |key: &str| -> Option<BTreeSet<String>> {
            v.get(key)?
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        Some(QueryShape {
            collection: v.get("collection")?.as_str()?.to_owned(),
            equalities: strings("equalities")?,
            array_contains: v
                .get("array_contains")
                .and_then(|s| s.as_str())
                .map(str::to_owned),
            ranges: strings("ranges")?,
            order: v
                .get("order")?
                .as_array()?
                .iter()
                .map(|o| {
                    Some((
                        o.get(0)?.as_str()?.to_owned(),
                        o.get(1)?.as_str()? == "DESCENDING",
                    ))
                })
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

/// Where recorded query shapes go.
#[derive(Default)]
pub struct QueryLog {
    seen: Mutex<BTreeSet<QueryShape>>,
    file: Option<std::path::PathBuf>,
}

impl QueryLog {
    /// A log kept in memory ([`QueryLog::shapes`]).
    pub fn in_memory() -> QueryLog {
        QueryLog::default()
    }

    /// The log named by `MLS_FIRESTORE_QUERY_LOG` (each new shape appended as a JSON line),
    /// if that variable is set.
    pub fn from_env() -> Option<QueryLog> {
        let path = std::env::var_os("MLS_FIRESTORE_QUERY_LOG").filter(|p| !p.is_empty())?;
        Some(QueryLog {
            seen: Mutex::default(),
            file: Some(path.into()),
        })
    }

    pub(crate) fn record(&self, shape: QueryShape) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&shape) {
            return;
        }
        if let Some(path) = &self.file {
            let line = format!("{}\n", shape.to_json());
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = appended {
                tracing::warn!(path = %path.display(), error = %e, "cannot append to the query log");
            }
        }
        seen.insert(shape);
    }

    /// Every distinct shape recorded so far.
    pub fn shapes(&self) -> Vec<QueryShape> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Why `indexes` (the text of `firestore.indexes.json`) cannot serve `shape` on production
/// Firestore; `None` when it can.
pub fn missing_index(shape: &QueryShape, indexes: &Value) -> Option<String> {
    let c = &shape.collection;
    let exempt = |field: &str| {
        indexes["fieldOverrides"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| {
                o["collectionGroup"] == *c
                    && o["fieldPath"] == field
                    && o["indexes"].as_array().is_some_and(|i| i.is_empty())
            })
    };
    let used = shape
        .equalities
        .iter()
        .chain(&shape.array_contains)
        .chain(&shape.ranges)
        .chain(shape.order.iter().map(|(f, _)| f));
    if let Some(f) = used.into_iter().find(|f| exempt(f)) {
        return Some(format!(
            "{c}: the query uses {f}, which a fieldOverrides entry exempts from indexing"
        ));
    }
    let ordered: BTreeSet<&String> = shape.order.iter().map(|(f, _)| f).collect();
    if let Some(r) = shape.ranges.iter().find(|r| !ordered.contains(r)) {
        return Some(format!(
            "{c}: the range on {r} must be on the first order-by field"
        ));
    }
    let filters: BTreeSet<&String> = shape
        .equalities
        .iter()
        .chain(&shape.array_contains)
        .filter(|f| !ordered.contains(f))
        .collect();
    if filters.is_empty() || shape.order.is_empty() {
        // Single-field indexes serve it (equalities are merged; one field's order).
        return None;
    }
    let wanted = |index: &Value| -> bool {
        if index["collectionGroup"] != *c || index["queryScope"] != "COLLECTION" {
            return false;
        }
        let Some(fields) = index["fields"].as_array() else {
            return false;
        };
        let n = filters.len();
        if fields.len() != n + shape.order.len() {
            return false;
        }
        let head_ok = fields[..n].iter().all(|f| {
            let Some(path) = f["fieldPath"].as_str() else {
                return false;
            };
            let is_array = shape.array_contains.as_deref() == Some(path);
            filters.contains(&path.to_string())
                && if is_array {
                    f["arrayConfig"] == "CONTAINS"
                } else {
                    f["order"].is_string()
                }
        });
        let head_distinct: BTreeSet<&str> = fields[..n]
            .iter()
            .filter_map(|f| f["fieldPath"].as_str())
            .collect();
        let tail_ok = fields[n..]
            .iter()
            .zip(&shape.order)
            .all(|(f, (path, desc))| {
                f["fieldPath"] == **path
                    && f["order"] == if *desc { "DESCENDING" } else { "ASCENDING" }
            });
        head_ok && head_distinct.len() == n && tail_ok
    };
    if indexes["indexes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(wanted)
    {
        None
    } else {
        Some(format!(
            "{c}: no composite index on {:?}{} then {:?}",
            shape.equalities,
            shape
                .array_contains
                .as_ref()
                .map(|a| format!(" + {a} CONTAINS"))
                .unwrap_or_default(),
            shape.order
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(eq: &[&str], array: Option<&str>, order: &[(&str, bool)]) -> QueryShape {
        QueryShape {
            collection: "events".into(),
            equalities: eq.iter().map(|s| s.to_string()).collect(),
            array_contains: array.map(str::to_owned),
            ranges: order
                .first()
                .map(|(f, _)| f.to_string())
                .into_iter()
                .collect(),
            order: order.iter().map(|(f, d)| (f.to_string(), *d)).collect(),
        }
    }

    #[test]
    fn composite_indexes_are_required_for_filters_plus_order() {
        let file = json!({
            "indexes": [{
                "collectionGroup": "events", "queryScope": "COLLECTION",
                "fields": [
                    {"fieldPath": "kind", "order": "ASCENDING"},
                    {"fieldPath": "tags", "arrayConfig": "CONTAINS"},
                    {"fieldPath": "order_key", "order": "ASCENDING"}
                ]
            }],
            "fieldOverrides": [{"collectionGroup": "events", "fieldPath": "json", "indexes": []}]
        });
        let ok = shape(&["kind"], Some("tags"), &[("order_key", false)]);
        assert_eq!(missing_index(&ok, &file), None);
        // One field's order alone: a single-field index.
        assert_eq!(
            missing_index(&shape(&[], None, &[("order_key", true)]), &file),
            None
        );
        // Equalities alone: merged single-field indexes.
        assert_eq!(missing_index(&shape(&["addr"], None, &[]), &file), None);
        // Another equality, or the other direction: not served.
        assert!(missing_index(&shape(&["pubkey"], None, &[("order_key", false)]), &file).is_some());
        assert!(missing_index(
            &shape(&["kind"], Some("tags"), &[("order_key", true)]),
            &file
        )
        .is_some());
        // An exempted field.
        assert!(missing_index(&shape(&["json"], None, &[]), &file).is_some());
        let back = QueryShape::from_json(&ok.to_json()).unwrap();
        assert_eq!(back, ok);
    }
}
