//! Live delivery of an accepted event: the subscription index narrows the candidates, the
//! gateway's visibility rule decides (the event's part once, then per subscriber), and matching
//! subscriptions get it once.

use crate::app::App;
use mls_proto::Event;
use std::sync::Arc;

pub async fn publish(app: &App, ev: &Event) {
    let candidates = app.subscriptions.matching(ev);
    if candidates.is_empty() {
        return;
    }
    let _timer = crate::metrics::FanoutTimer::start();
    let mut visible = Vec::with_capacity(candidates.len());
    let read = app
        .store
        .read_state(&mut |state| {
            visible.clear();
            let audience = app.gateway.audience(ev, state);
            for sub in &candidates {
                if sub.conn.with_viewer(|v| audience.admits_live(v, state)) {
                    visible.push(sub.clone());
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = read {
        // Without state we cannot decide visibility: deliver nothing rather than leak.
        tracing::error!(error = %e, "fan-out state read failed");
        return;
    }
    let json: Arc<str> = ev.to_json().into();
    for sub in visible {
        sub.deliver(ev.id, &json);
    }
}
