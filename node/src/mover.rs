//! Sends rooms that leave this node to their new holders, and applies the
//! outcome. A room's members are sent on with 4001 first (they wait at the
//! new holder until the room lands, so no client is in two rooms at once);
//! a room that landed closes here for good, a refused one reopens (members
//! that come back find it), and a handoff whose answer was lost is settled
//! by asking the receiver, never by guessing.
//!
//! Rooms are closed for a move by `placement` (on a view push, on a peer's
//! where-is question, or on the mover's own tick when views go stale); the
//! mover batches them per new holder, a few MiB per request, and sends the
//! batches of different holders at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::claim::decide_round;
use crate::node::Node;
use crate::peers::{PeerError, HANDOFF_BATCH_BYTES};
use crate::placement::{MoveOrder, MoveResult, RoundOutcome};
use crate::tasks;
use roompin_shared::control::{ForwardedPublish, HandoffOutcome, NodeRef, Published, Refusal};
use roompin_shared::protocol::close;

/// How often rooms are re-checked against the views without a push (a view
/// that went stale can be what kept a room here, and refused moves retry).
const TICK: Duration = Duration::from_millis(250);
/// Pause between attempts to settle a handoff whose answer was lost.
const SETTLE_PAUSE: Duration = Duration::from_millis(250);

/// Runs until shutdown: takes move orders and sends them.
pub async fn run(node: Arc<Node>, mut orders: mpsc::UnboundedReceiver<MoveOrder>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut pending = tokio::select! {
            order = orders.recv() => match order {
                Some(o) => vec![o],
                None => return,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                node.placement.start_moves(&node.ownership.snapshot(), now)
            }
            _ = node.shutdown.cancelled() => return,
        };
        while let Ok(o) = orders.try_recv() {
            pending.push(o);
        }
        if pending.is_empty() {
            continue;
        }
        let mut by_target: HashMap<NodeRef, Vec<MoveOrder>> = HashMap::new();
        for o in pending {
            by_target.entry(o.to.clone()).or_default().push(o);
        }
        for (to, orders) in by_target {
            for batch in chunks(orders) {
                let (node, to) = (node.clone(), to.clone());
                let on = node.clone();
                tasks::spawn(&on, tasks::HANDOFF, tracing::Span::none(), async move {
                    send(&node, &to, batch).await
                });
            }
        }
    }
}

/// Splits orders into batches of about `HANDOFF_BATCH_BYTES`.
fn chunks(orders: Vec<MoveOrder>) -> Vec<Vec<MoveOrder>> {
    let mut out: Vec<Vec<MoveOrder>> = Vec::new();
    let mut size = 0;
    for o in orders {
        let cost: usize = o.handoff.events.iter().map(String::len).sum::<usize>() + 256;
        if out.is_empty() || size + cost > HANDOFF_BATCH_BYTES {
            out.push(Vec::new());
            size = 0;
        }
        size += cost;
        if let Some(last) = out.last_mut() {
            last.push(o);
        }
    }
    out
}

async fn send(node: &Arc<Node>, to: &NodeRef, batch: Vec<MoveOrder>) {
    // The members go first: they reconnect, and wait at the new holder for
    // the room, so no client is ever in the old room and the new one at once.
    for o in &batch {
        o.room.send_members_away(close::ROOM_MOVED);
    }
    let rooms = batch.iter().map(|o| o.handoff.clone()).collect();
    match node.peers.handoff(to, rooms).await {
        Ok(outcomes) => {
            for (order, outcome) in batch.into_iter().zip(outcomes) {
                let (result, label) = match outcome {
                    HandoffOutcome::Adopted => (MoveResult::Landed, "adopted"),
                    HandoffOutcome::Duplicate => (MoveResult::Landed, "duplicate"),
                    HandoffOutcome::Refused {
                        reason: Refusal::Conflict,
                    } => (MoveResult::Conflict, "conflict"),
                    HandoffOutcome::Refused { reason } => (MoveResult::Reopen, reason.as_str()),
                };
                finish(node, &order, result, label).await;
            }
        }
        // Nothing listens there, or it turned the request away unread: it
        // adopted nothing, so the rooms reopen here.
        Err(e @ (PeerError::Refused | PeerError::Rejected(_))) => {
            tracing::warn!(to = %to.id, addr = %to.addr, rooms = batch.len(), error = %e, "handoff failed; the rooms stay here");
            for order in batch {
                finish(node, &order, MoveResult::Reopen, "unreachable").await;
            }
        }
        Err(PeerError::Unknown(why)) => {
            tracing::warn!(to = %to.id, rooms = batch.len(), error = %why, "handoff answer lost; settling each room with its receiver");
            for order in batch {
                let n = node.clone();
                tasks::spawn(node, tasks::HANDOFF, tracing::Span::none(), async move {
                    settle(&n, order).await
                });
            }
        }
    }
}

/// Applies the outcome of one room's handoff and does what follows.
async fn finish(node: &Arc<Node>, order: &MoveOrder, result: MoveResult, label: &str) {
    let now = Instant::now();
    let m = &node.metrics;
    m.handoffs.with_label_values(&["sent", label]).inc();
    m.handoff_seconds
        .with_label_values(&["sent"])
        .observe(now.saturating_duration_since(order.started).as_secs_f64());
    let meeting = &order.meeting;
    match result {
        MoveResult::Landed => {
            m.rooms_moved.inc();
            tracing::info!(meeting = %meeting, from = %node.id, to = %order.to.id, seq = order.handoff.seq, events = order.handoff.events.len(), "room handed over");
        }
        MoveResult::Conflict => {
            tracing::error!(meeting = %meeting, from = %node.id, to = %order.to.id, "handoff refused: the receiver holds another room of this meeting; closing ours")
        }
        MoveResult::Reopen => {
            tracing::warn!(meeting = %meeting, from = %node.id, to = %order.to.id, outcome = label, "handoff not adopted; the room reopens here")
        }
        MoveResult::Drop => {
            tracing::warn!(meeting = %meeting, from = %node.id, to = %order.to.id, "handoff unsettled and its receiver gone; the room closes")
        }
    }
    let effects = node.placement.finish_move(meeting, order.id, result, now);
    if let Some(room) = effects.kick {
        room.close_all(close::ROOM_MOVED);
    }
    if effects.forward.is_empty() {
        return;
    }
    let publishes = effects
        .forward
        .iter()
        .map(|q| ForwardedPublish {
            meeting_id: meeting.to_string(),
            user: q.user.clone(),
            text: q.text.clone(),
        })
        .collect();
    let results = node.peers.forward(&order.to, publishes, 0).await;
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(meeting = %meeting, to = %order.to.id, error = %e, "could not pass on the messages sent during the move");
            Vec::new()
        }
    };
    let mut results = results.into_iter();
    for q in effects.forward {
        match results.next() {
            Some(Published::Ok { seq, room }) => q.resolve(Some((seq, room))),
            _ => q.resolve(None),
        }
    }
}

/// A handoff whose answer was lost: ask the receiver whether it adopted the
/// room (and to promise never to if not). If the receiver is gone, it may
/// have adopted and passed the room on before it died, so everyone is asked
/// where the room is, as a claim round would; the room reopens here only if
/// nobody has it.
async fn settle(node: &Arc<Node>, order: MoveOrder) {
    loop {
        let now = Instant::now();
        let gone = match node
            .peers
            .abort(&order.to, &order.meeting, &order.handoff.room)
            .await
        {
            Ok(true) => return finish(node, &order, MoveResult::Landed, "adopted_late").await,
            Ok(false) => return finish(node, &order, MoveResult::Reopen, "unknown").await,
            Err(PeerError::Refused) => true,
            Err(_) => node.ownership.snapshot().known_fenced(&order.to.id, now),
        };
        if gone {
            let peers = node.peers_to_ask(now);
            let asks = peers
                .iter()
                .map(|p| node.peers.where_is(p, &order.meeting, None));
            let answers: Vec<_> = peers
                .iter()
                .cloned()
                .zip(futures_util::future::join_all(asks).await)
                .collect();
            let views = node.ownership.snapshot();
            let now = Instant::now();
            match decide_round(&node.id, &answers, false, |p| {
                p == order.to.id || views.known_fenced(p, now)
            }) {
                RoundOutcome::Create => {
                    return finish(node, &order, MoveResult::Reopen, "unknown").await
                }
                RoundOutcome::Relay(_) => {
                    return finish(node, &order, MoveResult::Drop, "unknown").await
                }
                RoundOutcome::AwaitHandoff | RoundOutcome::Retry(_) => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SETTLE_PAUSE) => {}
            _ = node.shutdown.cancelled() => return,
        }
    }
}
