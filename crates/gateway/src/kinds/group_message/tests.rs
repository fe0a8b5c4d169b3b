//! Tests of `kinds/group_message.rs`: the 445 admission table, epochs.

use crate::tests::fixtures::*;

#[test]
fn group_message_rules() {
    run(vec![
        row(
            "marmot 445 to an unknown group, unauthenticated (open)",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", OPEN], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "loxation 445 to an unknown group (open)",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", OPEN], &["k", "3"], &["p", "hint-not-a-key"]],
                        "AAEA",
                    ),
                    vec![pk(&w.carol)],
                )
            },
            Ok(()),
        ),
        row(
            "445 to an unknown group with unknown_groups = deny",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", OPEN], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![pk(&w.alice)],
                )
            },
            Err("restricted: unknown group"),
        )
        .cfg(|c| c.unknown_groups = UnknownGroups::Deny),
        row(
            "marmot 445 to a gated group, unauthenticated",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", GROUP], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![],
                )
            },
            Err("auth-required: group"),
        )
        .setup(Env::gate),
        row(
            "marmot 445 to a gated group, stranger",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", GROUP], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![pk(&w.carol)],
                )
            },
            Err("restricted: not a member of group 865f0c83…"),
        )
        .setup(Env::gate),
        row(
            "marmot 445 to a gated group, removed member",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", GROUP], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![pk(&w.erin)],
                )
            },
            Err("restricted: not a member of group"),
        )
        .setup(Env::gate),
        row(
            "marmot 445 to a gated group, member (signed by an ephemeral key)",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", GROUP], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![pk(&w.carol), pk(&w.bob)],
                )
            },
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "loxation 445 to a gated group, admin",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["h", GROUP], &["k", "4"]], "AAEA"),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "445 signed by a member's own key but published unauthenticated",
            |w| (ev(&w.bob, 445, T, &[&["h", GROUP]], "AAEA"), vec![]),
            Err("auth-required: group"),
        )
        .setup(Env::gate),
        row(
            "445 without h",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["encoding", "base64"]], "AAEA"),
                    vec![],
                )
            },
            Err("invalid: kind 445 must have exactly one h tag"),
        ),
        row(
            "445 with two h",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["h", OPEN], &["h", GROUP]], "AAEA"),
                    vec![],
                )
            },
            Err("invalid: kind 445 must have exactly one h tag"),
        ),
        row(
            "445 with empty content",
            |w| (ev(&w.eph, 445, T, &[&["h", OPEN]], ""), vec![]),
            Err("invalid: kind 445 content is empty"),
        ),
        row(
            "loxation 445 with a non-numeric k",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["h", OPEN], &["k", "x"]], "A"),
                    vec![],
                )
            },
            Err("invalid: k tag must be an unsigned integer"),
        ),
        row(
            "max_group_messages_per_minute reached",
            |w| (ev(&w.eph, 445, T, &[&["h", OPEN]], "second"), vec![]),
            Err("rate-limited: max_group_messages_per_minute reached"),
        )
        .cfg(|c| c.rate_limits.max_group_messages_per_minute = 1)
        .setup(|e| {
            let first = ev(&e.w.eph, 445, T, &[&["h", OPEN]], "first");
            e.ok(&first, &[], T);
        }),
        row(
            "group rate is per publisher",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["h", OPEN]], "second"),
                    vec![pk(&w.carol)],
                )
            },
            Ok(()),
        )
        .cfg(|c| c.rate_limits.max_group_messages_per_minute = 1)
        .setup(|e| {
            let first = ev(&e.w.eph, 445, T, &[&["h", OPEN]], "first");
            e.ok(&first, &[], T);
        }),
    ]);
}

#[test]
fn epochs_never_go_backwards() {
    let mut e = env(false);
    e.gate();
    let w = W::new();
    for (k, want) in [(5, 5), (3, 5), (7, 7)] {
        let msg = ev(
            &w.eph,
            445,
            T,
            &[&["h", GROUP], &["k", &k.to_string()]],
            &format!("m{k}"),
        );
        e.ok(&msg, &[pk(&w.bob)], T);
        assert_eq!(e.record(GROUP).last_epoch, Some(want));
    }
}
