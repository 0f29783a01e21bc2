//! The `ws` 8 broadcast server (bench/peers/ws-broadcast.js), spoken to with
//! the loadgen's `--protocol plain`.

use super::{start_node_script, Front};
use crate::env::Env;

pub async fn start(env: &Env) -> anyhow::Result<Front> {
    start_node_script(env, "ws", "ws-broadcast.js").await
}
