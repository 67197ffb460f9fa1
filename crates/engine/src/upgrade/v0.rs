//! Version 0 of the upgrade state: the app's state alone (`AppState`, the
//! plain data the engine's parts own, as the engine wrote it before the
//! upgrade existed and before the watch and cron triggers), without what
//! the app task had in hand (`Leftovers`: undelivered output, unread
//! channel bytes, queued messages). Read as version 1 with no triggers
//! armed and nothing in hand: an app frozen at a quiet moment is exactly
//! that.

use crate::supervisor::handover::FrozenApp;

pub(super) fn read(mut app: serde_json::Value) -> Result<FrozenApp, serde_json::Error> {
    if let Some(state) = app.as_object_mut() {
        // Version 0 had no triggers: none pending.
        state
            .entry("triggers")
            .or_insert_with(crate::supervisor::handover::no_triggers);
    }
    Ok(FrozenApp {
        state: serde_json::from_value(app)?,
        leftovers: Default::default(),
    })
}
