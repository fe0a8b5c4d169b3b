//! Tests of `kinds/noise_dm.rs`: the 446 admission table.

use crate::tests::fixtures::*;

#[test]
fn noise_dm_rules() {
    run(vec![
        row(
            "446 with p and v",
            |w| {
                (
                    ev(
                        &w.alice,
                        446,
                        T,
                        &[&["p", &hx(&w.bob)], &["v", "noise.1"]],
                        "noise",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "446 without p",
            |w| (ev(&w.alice, 446, T, &[&["v", "noise.1"]], "noise"), vec![]),
            Err("invalid: kind 446 must have at least one p tag"),
        ),
        row(
            "446 with empty content",
            |w| (ev(&w.alice, 446, T, &[&["p", &hx(&w.bob)]], ""), vec![]),
            Err("invalid: kind 446 content is empty"),
        ),
    ]);
}
