//! `CLOSE`: ends one of this connection's subscriptions (an unknown id is ignored).

use super::Session;

impl Session {
    pub(super) fn on_close(&mut self, sub_id: &str) {
        if let Some(sub) = self.subs.take(sub_id) {
            self.app.subscriptions.remove(self.conn.id, &sub);
        }
    }
}
