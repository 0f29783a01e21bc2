//! The Socket.IO 4 broadcast server (bench/peers/socketio-broadcast.js),
//! spoken to with the loadgen's `--protocol socketio --ws-path /socket.io/`.

use super::{start_node_script, Front};
use crate::env::Env;

pub async fn start(env: &Env) -> anyhow::Result<Front> {
    start_node_script(env, "socketio", "socketio-broadcast.js").await
}
