//! The node's rooms by meeting id, created on first use and dropped once
//! they have been empty for `room_idle_ms`.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::history::Budget;
use crate::metrics::Metrics;
use crate::room::{Joined, MemberHandle, Resume, Room};
use roompin_shared::MeetingId;

pub struct Rooms {
    map: Mutex<HashMap<MeetingId, Arc<Room>>>,
    node_id: Arc<str>,
    history_events: usize,
    budget: Arc<Budget>,
    metrics: Metrics,
}

impl Rooms {
    pub fn new(
        node_id: Arc<str>,
        history_events: usize,
        budget: Arc<Budget>,
        metrics: Metrics,
    ) -> Rooms {
        Rooms {
            map: Mutex::new(HashMap::new()),
            node_id,
            history_events,
            budget,
            metrics,
        }
    }

    pub fn get_or_create(&self, id: &MeetingId) -> Arc<Room> {
        let mut map = self.map.lock();
        if let Some(room) = map.get(id) {
            return room.clone();
        }
        let room = Arc::new(Room::new(
            id.clone(),
            self.node_id.clone(),
            self.history_events,
            self.budget.clone(),
            self.metrics.clone(),
        ));
        map.insert(id.clone(), room.clone());
        self.metrics.rooms.set(map.len() as i64);
        room
    }

    /// Joins the meeting's room, replacing a room that closed meanwhile.
    pub fn join(
        &self,
        id: &MeetingId,
        mut member: MemberHandle,
        resume: Option<Resume<'_>>,
    ) -> (Arc<Room>, Joined) {
        loop {
            let room = self.get_or_create(id);
            match room.join(member, resume) {
                Ok(joined) => return (room, joined),
                Err(back) => {
                    self.remove(&room);
                    member = back;
                }
            }
        }
    }

    /// Removes `room` if it is still the meeting's current room.
    pub fn remove(&self, room: &Arc<Room>) {
        let mut map = self.map.lock();
        if map
            .get(&room.meeting_id)
            .is_some_and(|r| Arc::ptr_eq(r, room))
        {
            map.remove(&room.meeting_id);
        }
        self.metrics.rooms.set(map.len() as i64);
    }

    pub fn all(&self) -> Vec<Arc<Room>> {
        self.map.lock().values().cloned().collect()
    }

    /// Drops rooms that have been empty for `idle`, until `shutdown`.
    pub async fn reap_idle(&self, idle: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(
            (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)),
        );
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            for room in self.all() {
                if room.close_if_idle(idle) {
                    self.remove(&room);
                }
            }
        }
    }
}
