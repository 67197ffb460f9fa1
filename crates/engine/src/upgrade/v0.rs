//! Version 0 of the upgrade state: the app's state alone (`AppState`, the
//! plain data the engine's parts own), without what the app task had in
//! hand (`Leftovers`: undelivered output, unread channel bytes, queued
//! messages). Read as version 1 with nothing in hand: an app frozen at a
//! quiet moment is exactly that.

use crate::supervisor::handover::FrozenApp;

pub(super) fn read(app: serde_json::Value) -> Result<FrozenApp, serde_json::Error> {
    Ok(FrozenApp {
        state: serde_json::from_value(app)?,
        leftovers: Default::default(),
    })
}
