//! The query string of a member request: `meeting_id` and the other
//! parameters, as the balancer and the node read them, and the join token's
//! place in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roompin_shared::auth::token_from;
use roompin_shared::meeting_id::{query_param, MAX_LEN};
use roompin_shared::protocol::{check_room, check_user, MEETING_PARAM};
use roompin_shared::MeetingId;

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let query = Some(query.as_ref());
    if let Ok(id) = MeetingId::from_query(query, MEETING_PARAM) {
        // A valid id is valid again, and within the rules.
        let s = id.as_str();
        assert!(!s.is_empty() && s.len() <= MAX_LEN);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_~".contains(&b)));
        assert_eq!(MeetingId::parse(s, MEETING_PARAM).ok().as_ref(), Some(&id));
    }
    for name in ["user", "since", "since_room", "token"] {
        if let Ok(Some(value)) = query_param(query, name) {
            let _ = check_user(&value);
            let _ = check_room(&value);
            let _ = value.parse::<u64>();
        }
    }
    let _ = token_from(query, [data]);
    let _ = token_from(None, [data]);
});
